"""Schema check of rendered Kubernetes objects, without a cluster.

Core kinds are checked against the OpenAPI-generated model classes of Debian's python3-kubernetes
(22.x: the Kubernetes 1.22 API): every field name must be in the model's attribute_map, every
value must have the model's openapi_types type (recursively), and the fields the model's
constructor refuses to leave unset are required. The few fields the chart uses that came after
1.22 are added in ADDED_FIELDS. The custom resources the chart renders (LeaderWorkerSet,
ServiceMonitor, ScaledObject) are checked against CRD_TYPES: the fields of their upstream API
types (the subset a chart sets), written in the same type vocabulary.

validate(obj) returns a list of "path: problem" strings; empty when the object is valid.
"""

import re

from kubernetes.client import models

# (apiVersion, kind) -> model class of python3-kubernetes.
CORE_KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    # autoscaling/v2 (GA in 1.23) is autoscaling/v2beta2 promoted with the same fields.
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2beta2HorizontalPodAutoscaler",
}

# Fields added after Kubernetes 1.22: model -> {json name: (type, required)}.
ADDED_FIELDS = {
    "V1Probe": {"grpc": ("V1GRPCAction", False)},  # beta 1.24, GA 1.27
}
# Models added after 1.22.
ADDED_MODELS = {
    "V1GRPCAction": {"port": ("int", True), "service": ("str", False)},
}

# Fields typed `str` (or maps of `str`) in the models that the API server parses as a
# resource.Quantity, which YAML may also give as a number.
QUANTITY_FIELDS = {
    ("V1ResourceRequirements", "limits"): "dict(str, quantity)",
    ("V1ResourceRequirements", "requests"): "dict(str, quantity)",
    ("V1EmptyDirVolumeSource", "sizeLimit"): "quantity",
    ("V2beta2MetricTarget", "value"): "quantity",
    ("V2beta2MetricTarget", "averageValue"): "quantity",
}

# Enumerations the API server enforces on fields the chart sets (the models leave them `str`).
ENUMS = {
    ("V1ServiceSpec", "type"): {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"},
    ("V1ServicePort", "protocol"): {"TCP", "UDP", "SCTP"},
    ("V1ContainerPort", "protocol"): {"TCP", "UDP", "SCTP"},
    ("V1Container", "imagePullPolicy"): {"Always", "IfNotPresent", "Never"},
    ("V1StatefulSetSpec", "podManagementPolicy"): {"OrderedReady", "Parallel"},
    ("V1EmptyDirVolumeSource", "medium"): {"", "Memory", "HugePages"},
    ("V1SeccompProfile", "type"): {"RuntimeDefault", "Localhost", "Unconfined"},
    ("V2beta2MetricSpec", "type"): {"Object", "Pods", "Resource", "External", "ContainerResource"},
    ("V2beta2MetricTarget", "type"): {"Utilization", "Value", "AverageValue"},
}

_DURATION = r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"
_RELABEL_ACTIONS = ("replace|keep|drop|hashmod|labelmap|labeldrop|labelkeep|lowercase|uppercase|"
                    "keepequal|dropequal")
_RELABEL_ACTIONS = "|".join(a for x in _RELABEL_ACTIONS.split("|") for a in (x, x[0].upper() + x[1:]))

# apiVersion, kind -> CRD type.
CRD_KINDS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "lws.LeaderWorkerSet",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.ServiceMonitor",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.ScaledObject",
}

# Custom resources' fields: type -> {json name: (type, required)}. From the upstream Go API types
# (json tags; +required / non-omitempty fields without a CRD default are required; enums from
# the kubebuilder markers): kubernetes-sigs/lws api/leaderworkerset/v1/leaderworkerset_types.go,
# prometheus-operator pkg/apis/monitoring/v1/{servicemonitor_types,types,http_config}.go, kedacore/keda
# apis/keda/v1alpha1/{scaledobject_types,scaletriggers_types}.go. Sub-objects a chart has no use
# for (TLS, auth) are left out, so they count as unknown.
_TOP = {"apiVersion": ("str", True), "kind": ("str", True), "metadata": ("V1ObjectMeta", True)}
CRD_TYPES = {
    "lws.LeaderWorkerSet": dict(_TOP, spec=("lws.LeaderWorkerSetSpec", True)),
    "lws.LeaderWorkerSetSpec": {
        "replicas": ("int", False),
        "leaderWorkerTemplate": ("lws.LeaderWorkerTemplate", True),
        "rolloutStrategy": ("lws.RolloutStrategy", False),
        "startupPolicy": ("enum:LeaderCreated|LeaderReady", False),
        "networkConfig": ("lws.NetworkConfig", False),
    },
    "lws.LeaderWorkerTemplate": {
        "leaderTemplate": ("V1PodTemplateSpec", False),
        "workerTemplate": ("V1PodTemplateSpec", True),
        "size": ("int", False),
        "restartPolicy": ("enum:Default|RecreateGroupOnPodRestart|RecreateGroupAfterStart|None", False),
        "subGroupPolicy": ("lws.SubGroupPolicy", False),
        "volumeClaimTemplates": ("list[V1PersistentVolumeClaim]", False),
        "persistentVolumeClaimRetentionPolicy": ("lws.PersistentVolumeClaimRetentionPolicy", False),
    },
    "lws.RolloutStrategy": {
        "type": ("enum:RollingUpdate", True),
        "rollingUpdateConfiguration": ("lws.RollingUpdateConfiguration", False),
    },
    "lws.RollingUpdateConfiguration": {
        "partition": ("int", False), "maxUnavailable": ("object", False), "maxSurge": ("object", False),
    },
    "lws.SubGroupPolicy": {
        "subGroupPolicyType": ("enum:LeaderWorker|LeaderExcluded", False), "subGroupSize": ("int", False),
    },
    "lws.NetworkConfig": {"subdomainPolicy": ("enum:Shared|UniquePerReplica", True)},
    "lws.PersistentVolumeClaimRetentionPolicy": {
        "whenDeleted": ("enum:Retain|Delete", False), "whenScaled": ("enum:Retain|Delete", False),
    },

    "monitoring.ServiceMonitor": dict(_TOP, spec=("monitoring.ServiceMonitorSpec", True)),
    "monitoring.ServiceMonitorSpec": {
        "jobLabel": ("str", False),
        "targetLabels": ("list[str]", False),
        "podTargetLabels": ("list[str]", False),
        "endpoints": ("list[monitoring.Endpoint]", True),
        "selector": ("V1LabelSelector", True),
        "selectorMechanism": ("enum:RelabelConfig|RoleSelector", False),
        "namespaceSelector": ("monitoring.NamespaceSelector", False),
        "sampleLimit": ("int", False),
        "scrapeProtocols": ("list[str]", False),
        "fallbackScrapeProtocol": ("str", False),
        "targetLimit": ("int", False),
        "labelLimit": ("int", False),
        "labelNameLengthLimit": ("int", False),
        "labelValueLengthLimit": ("int", False),
        "keepDroppedTargets": ("int", False),
        "attachMetadata": ("monitoring.AttachMetadata", False),
        "scrapeClass": ("str", False),
        "bodySizeLimit": ("str", False),
        "serviceDiscoveryRole": ("enum:Endpoints|EndpointSlice", False),
    },
    "monitoring.Endpoint": {
        "port": ("str", False),
        "targetPort": ("object", False),
        "path": ("str", False),
        "scheme": ("enum:http|https|HTTP|HTTPS", False),
        "params": ("dict(str, list[str])", False),
        "interval": ("duration", False),
        "scrapeTimeout": ("duration", False),
        "honorLabels": ("bool", False),
        "honorTimestamps": ("bool", False),
        "trackTimestampsStaleness": ("bool", False),
        "metricRelabelings": ("list[monitoring.RelabelConfig]", False),
        "relabelings": ("list[monitoring.RelabelConfig]", False),
        "filterRunning": ("bool", False),
        "bearerTokenFile": ("str", False),
        "bearerTokenSecret": ("V1SecretKeySelector", False),
        "followRedirects": ("bool", False),
        "enableHttp2": ("bool", False),
    },
    "monitoring.RelabelConfig": {
        "sourceLabels": ("list[str]", False),
        "separator": ("str", False),
        "targetLabel": ("str", False),
        "regex": ("str", False),
        "modulus": ("int", False),
        "replacement": ("str", False),
        "action": ("enum:" + _RELABEL_ACTIONS, False),
    },
    "monitoring.NamespaceSelector": {"any": ("bool", False), "matchNames": ("list[str]", False)},
    "monitoring.AttachMetadata": {"node": ("bool", False)},

    "keda.ScaledObject": dict(_TOP, spec=("keda.ScaledObjectSpec", True)),
    "keda.ScaledObjectSpec": {
        "scaleTargetRef": ("keda.ScaleTarget", True),
        "pollingInterval": ("int", False),
        "initialCooldownPeriod": ("int", False),
        "cooldownPeriod": ("int", False),
        "idleReplicaCount": ("int", False),
        "minReplicaCount": ("int", False),
        "maxReplicaCount": ("int", False),
        "advanced": ("keda.AdvancedConfig", False),
        "triggers": ("list[keda.ScaleTriggers]", True),
        "fallback": ("keda.Fallback", False),
    },
    "keda.ScaleTarget": {
        "name": ("str", True), "apiVersion": ("str", False), "kind": ("str", False),
        "envSourceContainerName": ("str", False),
    },
    "keda.AdvancedConfig": {
        "horizontalPodAutoscalerConfig": ("keda.HorizontalPodAutoscalerConfig", False),
        "restoreToOriginalReplicaCount": ("bool", False),
        "scalingModifiers": ("keda.ScalingModifiers", False),
    },
    "keda.HorizontalPodAutoscalerConfig": {
        "behavior": ("V2beta2HorizontalPodAutoscalerBehavior", False), "name": ("str", False),
    },
    "keda.ScalingModifiers": {
        "formula": ("str", False), "target": ("str", False), "activationTarget": ("str", False),
        "metricType": ("enum:AverageValue|Value", False),
    },
    "keda.ScaleTriggers": {
        "type": ("str", True),
        "name": ("str", False),
        "useCachedMetrics": ("bool", False),
        "metadata": ("dict(str, str)", True),
        "authenticationRef": ("keda.AuthenticationRef", False),
        "metricType": ("enum:AverageValue|Value|Utilization", False),
    },
    "keda.AuthenticationRef": {
        "name": ("str", True), "kind": ("enum:TriggerAuthentication|ClusterTriggerAuthentication", False),
    },
    "keda.Fallback": {
        "failureThreshold": ("int", True), "replicas": ("int", True),
        "behavior": ("enum:static|currentReplicas|currentReplicasIfHigher|currentReplicasIfLower|scalingModifiers", False),
    },
}

# Metadata keys of KEDA's prometheus trigger (pkg/scalers/prometheus_scaler.go): required, optional.
KEDA_PROMETHEUS_METADATA = ({"serverAddress", "query", "threshold"},
                            {"queryParameters", "activationThreshold", "namespace", "customHeaders",
                             "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner"})

_QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

_fields_cache = {}


def _required_by_constructor(cls):
    """Fields the model's constructor rejects as None, found by constructing it repeatedly."""
    given, required = {}, set()
    for _ in range(len(cls.openapi_types) + 1):
        try:
            cls(**given)
            return required
        except ValueError as e:
            m = re.search(r"Invalid value for `(\w+)`, must not be `None`", str(e))
            if not m or m.group(1) in given:
                raise
            required.add(m.group(1))
            given[m.group(1)] = object()
    return required


def fields(type_name):
    """{json name: (type, required)} of a model or CRD type."""
    if type_name in _fields_cache:
        return _fields_cache[type_name]
    if type_name in CRD_TYPES:
        out = CRD_TYPES[type_name]
    elif type_name in ADDED_MODELS:
        out = ADDED_MODELS[type_name]
    else:
        cls = getattr(models, type_name, None)
        if cls is None or not hasattr(cls, "openapi_types"):
            raise KeyError(f"no schema for type {type_name}")
        required = _required_by_constructor(cls)
        out = {}
        for attr, json_name in cls.attribute_map.items():
            t = QUANTITY_FIELDS.get((type_name, json_name), cls.openapi_types[attr])
            out[json_name] = (t, attr in required)
        out.update(ADDED_FIELDS.get(type_name, {}))
    _fields_cache[type_name] = out
    return out


def _check(value, t, path, errors, owner=None, field=None):
    if field is not None and (owner, field) in ENUMS and value not in ENUMS[(owner, field)]:
        errors.append(f"{path}: {value!r} is not one of {sorted(ENUMS[(owner, field)])}")
        return
    if t.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, t[5:-1], f"{path}[{i}]", errors)
        return
    if t.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        inner = t[len("dict(str, "):-1]
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append(f"{path}: key {k!r} is not a string")
            _check(v, inner, f"{path}.{k}", errors)
        return
    if t.startswith("enum:"):
        if value not in t[5:].split("|"):
            errors.append(f"{path}: {value!r} is not one of {t[5:].split('|')}")
        return
    scalar = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "datetime": lambda v: isinstance(v, str),
        "date": lambda v: isinstance(v, str),
        # IntOrString in the models.
        "object": lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
        "quantity": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool))
                              or (isinstance(v, str) and bool(_QUANTITY.match(v))),
        "duration": lambda v: isinstance(v, str) and bool(re.match(_DURATION, v)),
    }
    if t in scalar:
        if not scalar[t](value):
            errors.append(f"{path}: {value!r} is not a valid {t}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({t}), got {type(value).__name__} {value!r}")
        return
    schema = fields(t)
    for k, v in value.items():
        if k not in schema:
            errors.append(f"{path}.{k}: unknown field of {t} (known: {', '.join(sorted(schema))})")
            continue
        if v is None:
            continue  # YAML null: the field is unset
        _check(v, schema[k][0], f"{path}.{k}", errors, t, k)
    for k, (_, required) in schema.items():
        if required and value.get(k) is None:
            errors.append(f"{path}.{k}: required field of {t} missing")


def _check_names(obj, errors, where):
    """Name and label syntax the API server enforces."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    kind = obj.get("kind")
    if kind == "Service":
        if not (_DNS1035_LABEL.match(name) and len(name) <= 63):
            errors.append(f"{where}.metadata.name: {name!r} is not a DNS-1035 label")
    elif not (_DNS1123_SUBDOMAIN.match(name) and len(name) <= 253):
        errors.append(f"{where}.metadata.name: {name!r} is not a DNS-1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (prefix and not _DNS1123_SUBDOMAIN.match(prefix)) or not _LABEL_NAME.match(label) or len(label) > 63:
            errors.append(f"{where}.metadata.labels: bad key {key!r}")
        if not isinstance(value, str) or (value and not _LABEL_NAME.match(value)) or len(value) > 63:
            errors.append(f"{where}.metadata.labels.{key}: bad value {value!r}")


def _walk_pod_specs(obj):
    """(path, pod spec) of every pod template in a workload."""
    spec = obj.get("spec") or {}
    if obj.get("kind") in ("Deployment", "StatefulSet"):
        yield "spec.template.spec", (spec.get("template") or {}).get("spec") or {}
    elif obj.get("kind") == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate") or {}
        for t in ("leaderTemplate", "workerTemplate"):
            if t in lwt:
                yield f"spec.leaderWorkerTemplate.{t}.spec", (lwt[t] or {}).get("spec") or {}


def _check_pod_spec(pod, path, errors):
    names = set()
    for i, c in enumerate(pod.get("containers") or []):
        cp = f"{path}.containers[{i}]"
        if not _DNS1123_LABEL.match(c.get("name", "")) or c.get("name") in names:
            errors.append(f"{cp}.name: {c.get('name')!r} is not a unique DNS-1123 label")
        names.add(c.get("name"))
        port_names = set()
        for j, p in enumerate(c.get("ports") or []):
            n, num = p.get("name"), p.get("containerPort")
            if n is not None and (not _PORT_NAME.match(n) or len(n) > 15 or not re.search("[a-z]", n)
                                  or "--" in n or n in port_names):
                errors.append(f"{cp}.ports[{j}].name: {n!r} is not a unique IANA service name")
            port_names.add(n)
            if not isinstance(num, int) or not 1 <= num <= 65535:
                errors.append(f"{cp}.ports[{j}].containerPort: {num!r} out of range")
        for j, e in enumerate(c.get("env") or []):
            if not _ENV_NAME.match(e.get("name", "")):
                errors.append(f"{cp}.env[{j}].name: {e.get('name')!r} is not a valid variable name")
        volumes = {v.get("name") for v in pod.get("volumes") or []}
        for j, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in volumes:
                errors.append(f"{cp}.volumeMounts[{j}]: no volume named {m.get('name')!r}")


def validate(obj):
    """Problems with one rendered object, as "path: problem" strings."""
    if not isinstance(obj, dict):
        return [f"not a mapping: {obj!r}"]
    key = (obj.get("apiVersion"), obj.get("kind"))
    where = f"{key[1]}/{(obj.get('metadata') or {}).get('name')}"
    type_name = CORE_KINDS.get(key) or CRD_KINDS.get(key)
    if type_name is None:
        return [f"{where}: no schema for apiVersion {key[0]!r} kind {key[1]!r}"]
    errors = []
    _check(obj, type_name, where, errors)
    _check_names(obj, errors, where)
    for path, pod in _walk_pod_specs(obj):
        _check_pod_spec(pod, f"{where}.{path}", errors)
    for svc_port in ((obj.get("spec") or {}).get("ports") or []) if key[1] == "Service" else []:
        n = svc_port.get("name")
        if n is not None and (not _PORT_NAME.match(n) or len(n) > 15):
            errors.append(f"{where}.spec.ports: bad port name {n!r}")
    if key[1] == "ScaledObject":
        for i, trig in enumerate((obj.get("spec") or {}).get("triggers") or []):
            if trig.get("type") != "prometheus":
                continue
            md = trig.get("metadata") or {}
            required, optional = KEDA_PROMETHEUS_METADATA
            for k in required - md.keys():
                errors.append(f"{where}.spec.triggers[{i}].metadata.{k}: required by the prometheus scaler")
            for k in md.keys() - required - optional:
                errors.append(f"{where}.spec.triggers[{i}].metadata.{k}: unknown to the prometheus scaler")
            try:
                float(md.get("threshold", ""))
            except ValueError:
                errors.append(f"{where}.spec.triggers[{i}].metadata.threshold: not a number")
    return errors
