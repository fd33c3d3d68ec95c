#!/usr/bin/env python3
"""Renders helm/diffmesh as `helm template` does and checks what it renders.

For each layout in CASES (the default values, the 8-GPU example on a LeaderWorkerSet and on the
StatefulSet fallback, CPU with monitoring and autoscaling, KEDA):
  - every object against the Kubernetes API schema (k8s_schema.py);
  - every container's flags against the flags its binary lists in --help (a flag the binary does
    not take fails), with $(VAR) references resolved as the kubelet resolves them;
  - ports: the named container ports `grpc` / `metrics` are the --port / --metrics-port the
    binary gets, and every Service's target ports exist on the pods it selects;
  - probes: native gRPC startup/readiness/liveness probes on grpc.health.v1 at --port, for the
    health service name the binary registers, on every pod that serves gRPC (every denoise rank
    serves health; its startup and liveness probes ask for "", readiness for the group) and on no
    other;
  - GPUs: --device=cuda exactly where nvidia.com/gpu is in the limits (one per pod), with a
    memory-backed /dev/shm;
  - the denoise group: ranks 0..world-1 (world = cfg × ulysses × ring × tp = --world-size = the
    group's pod count), each rank's --rank and --master-addr as the pod will see them (the
    LeaderWorkerSet's LWS_* variables, or the StatefulSet pod-index label and pod DNS name),
    identical flags on every rank but --rank, the leader Service selecting rank 0 alone;
  - the pipeline ConfigMap: mounted where --pipeline points, stage addresses = the Services' DNS
    names and gRPC ports, and accepted by the real diffmesh-orchestrator;
  - the dashboard ConfigMap, the ServiceMonitor's coverage, the autoscaler's target and metric;
and that bad values (a zero degree, a StatefulSet with two groups, ...) fail to render with
the chart's message.

Exits 77 (skipped) when go, the Debian Go libraries or python3-kubernetes are missing.
"""

import argparse
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time

SKIP = 77
GOCODE = "/usr/share/gocode/src"
GPU = "nvidia.com/gpu"
LWS_LABEL = "leaderworkerset.sigs.k8s.io/"
POD_INDEX = "apps.kubernetes.io/pod-index"
EXAMPLE = "helm/diffmesh/examples/glm-image-8gpu.yaml"
LTX2_EXAMPLE = "helm/diffmesh/examples/ltx2-8gpu.yaml"

# (name, helm-render arguments, release namespace)
CASES = [
    ("default values", [], "default"),
    ("2 groups of 8 GPUs on a LeaderWorkerSet", ["-f", EXAMPLE, "--set", "denoise.replicas=2"], "default"),
    ("8 GPUs on a StatefulSet", ["-f", EXAMPLE, "--set", "denoise.leaderWorkerSet.enabled=false"], "default"),
    ("LTX-2: CFG 4 × Ulysses 2 denoise group, no AR service", ["-f", LTX2_EXAMPLE], "default"),
    ("LTX-2, decoding on its own Deployment", ["-f", LTX2_EXAMPLE, "--set", "decode.enabled=true"],
     "default"),
    ("CPU, ServiceMonitor, HPA through prometheus-adapter",
     ["--name", "prod", "--set", "gpu.enabled=false,serviceMonitor.enabled=true,autoscaling.enabled=true",
      "--set", "denoise.scrapeAllRanks=true,denoise.parallel.ulysses=2,denoise.leaderWorkerSet.enabled=false",
      "--set-string", "autoscaling.targetQueueSeconds=1.5",
      "--set-string", "pipeline.services.encoder=prod-diffmesh-encoder.{{ .Release.Namespace }}.svc.cluster.local:50053",
      "--set", "orchestrator.extraArgs={--host=0.0.0.0},stageToken.existingSecret=my-stage-token"], "serving"),
    ("KEDA scaling the denoise groups",
     ["-f", EXAMPLE, "--set", "autoscaling.enabled=true,autoscaling.engine=keda,autoscaling.target=denoise",
      "--set", "serviceMonitor.enabled=true,denoise.replicas=2,ar.extraArgs={--chunk-tokens=16}"], "gpu"),
]

# helm-render arguments that must fail, and the message they must fail with.
FAILURES = [
    (["--set", "denoise.parallel.tp=0"], "denoise.parallel.tp must be a positive integer"),
    (["--set", "denoise.leaderWorkerSet.enabled=false,denoise.replicas=2"], "denoise.replicas > 1 needs"),
    (["--set", "image.repository="], "image.repository is required"),
    (["--set", "denoise.heartbeat.interval=2s,denoise.heartbeat.timeout=4s"],
     "denoise.heartbeat.timeout must be more than twice denoise.heartbeat.interval"),
    (["--set", "denoise.heartbeat.interval=0ms"], "denoise.heartbeat.interval must be positive"),
    (["--set", "denoise.heartbeat.timeout=4"], "denoise.heartbeat.timeout must be a whole number"),
    (["--set", "ar.maxRequestTime=0s"], "ar.maxRequestTime must be positive"),
    (["--set", "encoder.maxRequestTime=ten"], "encoder.maxRequestTime must be a whole number"),
    (["--set", "autoscaling.enabled=true,autoscaling.target=gateway"], "autoscaling.target must be"),
    (["--set", "autoscaling.enabled=true,autoscaling.engine=cron"], "autoscaling.engine must be"),
    (["--set", "modelDir=GLM-Image"], "modelDir needs modelVolume"),
    (["--set", "autoscaling.enabled=true,autoscaling.target=denoise,denoise.leaderWorkerSet.enabled=false"],
     "autoscaling.target denoise needs"),
]


class Failure(Exception):
    pass


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(SKIP)


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Renderer and binaries

def build_renderer(source_dir, work_dir):
    """Builds helm/tests/render with Debian's Go libraries (GOPATH mode, offline, cached)."""
    go = shutil.which("go") or next((p for p in ("/usr/lib/go/bin/go",) if os.path.exists(p)), None)
    if go is None:
        skip("no `go` (apt-get install golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev)")
    for lib in ("github.com/Masterminds/sprig", "github.com/Masterminds/semver", "sigs.k8s.io/yaml"):
        if not os.path.isdir(os.path.join(GOCODE, lib)):
            skip(f"no {GOCODE}/{lib} (apt-get install golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev)")
    gopath = os.path.join(work_dir, "gopath")
    # sprig imports semver as .../semver/v3; Debian installs it at .../semver.
    link = os.path.join(gopath, "src/github.com/Masterminds/semver/v3")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.join(GOCODE, "github.com/Masterminds/semver"), link)
    out = os.path.join(work_dir, "helm-render")
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:/usr/share/gocode", GOENV="off",
               GOCACHE=os.path.join(work_dir, "gocache"), CGO_ENABLED="0", GOFLAGS="")
    r = subprocess.run([go, "build", "-o", out, "."], cwd=os.path.join(source_dir, "helm/tests/render"),
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"building helm/tests/render failed:\n{r.stdout}{r.stderr}")
    return out


def render(renderer, source_dir, args, namespace):
    cmd = [renderer, "--namespace", namespace] + [
        os.path.join(source_dir, a) if a in (EXAMPLE, LTX2_EXAMPLE) else a for a in args] + [
        os.path.join(source_dir, "helm/diffmesh")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


class Binary:
    """A service binary's flags (from --help) and health service names (from its main.cc)."""

    def __init__(self, name, path, source_dir):
        self.name, self.path = name, path
        r = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
        self.help = r.stdout + r.stderr
        self.flags = set(re.findall(r"^\s+--(\w+) \(", self.help, re.M))
        if "port" not in self.flags:
            raise Failure(f"{path} --help lists no --port:\n{self.help}")
        stage = name.replace("diffmesh-", "")
        main_cc = open(os.path.join(source_dir, "services", stage, "main.cc")).read()
        m = re.search(r"health_service_names\s*=\s*\{([^}]*)\}", main_cc)
        # "" (the whole server) is registered by every service (common/rpc/server.cc).
        self.health = (set(re.findall(r'"([^"]+)"', m.group(1))) if m else set()) | {""}


# ---------------------------------------------------------------------------------------------
# Pods as they will run

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


class Pod:
    def __init__(self, name, workload, role, template, labels, env, hostname=None, subdomain=None):
        self.name, self.workload, self.role = name, workload, role
        self.spec = template.get("spec") or {}
        self.labels = dict((template.get("metadata") or {}).get("labels") or {}, **labels)
        self.annotations = (template.get("metadata") or {}).get("annotations") or {}
        self.container = (self.spec.get("containers") or [{}])[0]
        # Environment as the kubelet builds it: the container's env (fieldRefs resolved), plus
        # what a controller injects.
        self.env = dict(env)
        for e in self.container.get("env") or []:
            if "value" in e:
                self.env[e["name"]] = e["value"]
            elif "valueFrom" in e and "fieldRef" in e["valueFrom"]:
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
                if m and m.group(1) in self.labels:
                    self.env[e["name"]] = self.labels[m.group(1)]
                elif path == "metadata.name":
                    self.env[e["name"]] = name
        self.args = [re.sub(r"\$\((\w+)\)", lambda m: self.env.get(m.group(1), m.group(0)), a)
                     for a in self.container.get("args") or []]
        self.binary = os.path.basename((self.container.get("command") or [""])[0])
        self.flags = {}
        for a in self.args:
            m = re.fullmatch(r"--([\w-]+)=(.*)", a, re.S)
            if not m:
                raise Failure(f"{self}: argument {a!r} is not --flag=value")
            flag = m.group(1).replace("-", "_")
            if flag in self.flags:
                raise Failure(f"{self}: --{flag} given twice")
            self.flags[flag] = m.group(2)
        self.ports = {p.get("name"): p.get("containerPort") for p in self.container.get("ports") or []}
        # A rank of a denoise group (diffmesh-denoise --role decode is a lone decode service).
        self.is_rank = self.binary == "diffmesh-denoise" and self.flags.get("role", "denoise") == "denoise"

    def __repr__(self):
        return f"pod {self.name} ({self.workload['kind']} {self.workload['metadata']['name']}, {self.role})"


def expand_pods(objs, namespace):
    """Every pod the workloads create, with the labels and variables their controllers add."""
    pods = []
    for o in objs:
        kind, name, spec = o["kind"], o["metadata"]["name"], o.get("spec") or {}
        if kind == "Deployment":
            replicas = spec.get("replicas", 1)
            for i in range(replicas):
                pods.append(Pod(f"{name}-{i}", o, "replica", spec["template"], {}, {}))
        elif kind == "StatefulSet":
            for i in range(spec.get("replicas", 1)):
                labels = {POD_INDEX: str(i), "statefulset.kubernetes.io/pod-name": f"{name}-{i}"}
                pods.append(Pod(f"{name}-{i}", o, f"rank {i}", spec["template"], labels, {}))
        elif kind == "LeaderWorkerSet":
            lwt = spec["leaderWorkerTemplate"]
            size = lwt.get("size", 1)
            for g in range(spec.get("replicas", 1)):
                leader = f"{name}-{g}"
                env = {"LWS_LEADER_ADDRESS": f"{leader}.{name}.{namespace}", "LWS_GROUP_SIZE": str(size)}
                for w in range(size):
                    labels = {LWS_LABEL + "name": name, LWS_LABEL + "group-index": str(g),
                              LWS_LABEL + "worker-index": str(w)}
                    template = lwt.get("leaderTemplate") if w == 0 and lwt.get("leaderTemplate") else lwt["workerTemplate"]
                    pods.append(Pod(leader if w == 0 else f"{leader}-{w}", o, "leader" if w == 0 else f"worker {w}",
                                    template, labels, dict(env, LWS_WORKER_INDEX=str(w))))
    return pods


# ---------------------------------------------------------------------------------------------
# Checks

def check(cond, msg):
    if not cond:
        raise Failure(msg)


def check_containers(pods, binaries, seen_binaries):
    for pod in pods:
        c = pod.container
        check(pod.binary.startswith("diffmesh-"), f"{pod}: command {c.get('command')} is not a diffmesh binary")
        binary = binaries.get(pod.binary)
        if binary is None:
            continue
        seen_binaries.add(pod.binary)
        for flag in pod.flags:
            check(flag in binary.flags,
                  f"{pod}: {pod.binary} takes no --{flag} (its flags: {', '.join(sorted(binary.flags))})")
        for a in pod.args:
            check("$(" not in a, f"{pod}: {a!r} refers to a variable the container does not have")
        # Ports: the named ports are the ones the binary listens on.
        check("metrics_port" in pod.flags and int(pod.flags["metrics_port"]) > 0,
              f"{pod}: no --metrics-port (every service exposes /metrics)")
        check(pod.ports.get("metrics") == int(pod.flags["metrics_port"]),
              f"{pod}: container port `metrics` {pod.ports.get('metrics')} != --metrics-port {pod.flags['metrics_port']}")
        # Every denoise rank serves gRPC health at --port (rank 0 also DenoiseService).
        serves_grpc = pod.role in ("replica", "leader") or pod.is_rank
        port = int(pod.flags.get("port", 0))
        check(port > 0, f"{pod}: no --port")
        if "grpc" in pod.ports:
            check(pod.ports["grpc"] == port, f"{pod}: container port `grpc` {pod.ports['grpc']} != --port {port}")
        else:
            check(not serves_grpc, f"{pod}: serves gRPC but declares no container port `grpc`")
        # Probes.
        grpc_probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if c.get(k, {}).get("grpc")}
        if pod.is_rank and grpc_probes:
            # A rank waiting for a lost peer stays alive: only readiness asks for the group.
            for kind in ("startupProbe", "livenessProbe"):
                check(grpc_probes.get(kind, {}).get("grpc", {}).get("service", "") == "",
                      f"{pod}: the {kind} of a denoise rank must ask for \"\" (the process), not the group")
            check(grpc_probes.get("readinessProbe", {}).get("grpc", {}).get("service") == "diffmesh.v1.DenoiseService",
                  f"{pod}: the readiness probe of a denoise rank must ask for diffmesh.v1.DenoiseService")
        if pod.workload["kind"] == "StatefulSet":
            check(pod.env.get("DIFFMESH_RANK") == pod.flags.get("rank"), f"{pod}: DIFFMESH_RANK != --rank")
        if serves_grpc:
            check(set(grpc_probes) == {"startupProbe", "readinessProbe", "livenessProbe"},
                  f"{pod}: needs native gRPC startup, readiness and liveness probes (has {sorted(grpc_probes)})")
            for kind, probe in grpc_probes.items():
                check(probe["grpc"].get("port") == port, f"{pod}: {kind} probes port {probe['grpc'].get('port')}, not --port {port}")
                check(probe["grpc"].get("service", "") in binary.health,
                      f"{pod}: {kind} asks for health of {probe['grpc'].get('service')!r}; {pod.binary} registers {sorted(binary.health)}")
            s = grpc_probes["startupProbe"]
            budget = s.get("periodSeconds", 10) * s.get("failureThreshold", 3)
            check(budget >= 300, f"{pod}: startup probe allows {budget} s, too little to load the weights")
        else:
            check(not any(k in c for k in ("startupProbe", "readinessProbe", "livenessProbe")),
                  f"{pod}: no gRPC endpoint, yet probed")
        # GPUs.
        limits = (c.get("resources") or {}).get("limits") or {}
        cuda = pod.flags.get("device") == "cuda"
        if cuda:
            check(str(limits.get(GPU)) == "1", f"{pod}: --device=cuda needs {GPU}: 1 in its limits (has {limits.get(GPU)})")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            vols = {v["name"]: v for v in pod.spec.get("volumes") or []}
            shm = vols.get(mounts.get("/dev/shm"), {}).get("emptyDir") or {}
            check(shm.get("medium") == "Memory", f"{pod}: a GPU pod needs /dev/shm as a Memory emptyDir")
        else:
            check(GPU not in limits, f"{pod}: holds a GPU but runs {pod.binary} on the CPU")
        check(pod.binary not in ("diffmesh-orchestrator", "diffmesh-encoder") or not cuda,
              f"{pod}: {pod.binary} has no GPU path")
        # Security.
        psc, csc = pod.spec.get("securityContext") or {}, c.get("securityContext") or {}
        check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, f"{pod}: must run as non-root")
        check(csc.get("allowPrivilegeEscalation") is False and "ALL" in (csc.get("capabilities") or {}).get("drop", []),
              f"{pod}: container security context must drop ALL capabilities and privilege escalation")
        if csc.get("readOnlyRootFilesystem"):
            check(any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts") or []),
                  f"{pod}: read-only root filesystem without a writable /tmp")
        check(re.fullmatch(r"[^:\s]+:[^:\s]+", c.get("image", "")) is not None, f"{pod}: image {c.get('image')!r} has no tag")


def check_denoise_groups(pods, objs, namespace, domain):
    ranks = [p for p in pods if p.is_rank]
    by_workload = {}
    for p in ranks:
        by_workload.setdefault(id(p.workload), []).append(p)
    for group_pods in by_workload.values():
        w = group_pods[0].workload
        kind, name, spec = w["kind"], w["metadata"]["name"], w["spec"]
        groups = {}
        for p in group_pods:
            groups.setdefault(p.labels.get(LWS_LABEL + "group-index", "0"), []).append(p)
        for g, members in groups.items():
            f0 = members[0].flags
            degrees = [int(f0.get(k, 1)) for k in ("cfg_degree", "ulysses_degree", "ring_degree", "tp_degree")]
            world = degrees[0] * degrees[1] * degrees[2] * degrees[3]
            check(int(f0.get("world_size", 0)) == world,
                  f"{kind} {name}: --world-size {f0.get('world_size')} != cfg × ulysses × ring × tp = {world}")
            check(len(members) == world, f"{kind} {name} group {g}: {len(members)} pods for {world} ranks")
            if kind == "LeaderWorkerSet":
                check(spec["leaderWorkerTemplate"].get("size") == world, f"{name}: size != world size {world}")
            check(sorted(int(p.flags.get("rank", -1)) for p in members) == list(range(world)),
                  f"{kind} {name} group {g}: ranks {sorted(p.flags.get('rank') for p in members)}, want 0..{world - 1}")
            for p in members:
                others = {k: v for k, v in p.flags.items() if k != "rank"}
                check(others == {k: v for k, v in f0.items() if k != "rank"},
                      f"{p}: flags differ from rank {members[0].flags.get('rank')}'s beyond --rank")
                check(p.flags.get("launch_ranks") == "false", f"{p}: ranks are pods: needs --launch-ranks=false")
            rank0 = next(p for p in members if p.flags["rank"] == "0")
            check(rank0.ports.get("rendezvous") == int(f0["master_port"]),
                  f"{rank0}: container port `rendezvous` != --master-port {f0['master_port']}")
            # --master-addr must name rank 0's pod in DNS.
            addr = f0["master_addr"]
            if kind == "LeaderWorkerSet":
                check(addr == f"{rank0.name}.{name}.{namespace}",
                      f"{name}: --master-addr {addr} is not rank 0's pod {rank0.name}.{name}.{namespace}")
            else:
                svc = spec.get("serviceName")
                check(addr == f"{rank0.name}.{svc}.{namespace}.svc.{domain}",
                      f"{name}: --master-addr {addr} is not rank 0's pod DNS name")
                headless = [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == svc]
                check(headless and headless[0]["spec"].get("clusterIP") == "None"
                      and headless[0]["spec"].get("publishNotReadyAddresses") is True,
                      f"{name}: serviceName {svc} must be a headless Service publishing unready pods")
                check(all(selects(headless[0]["spec"]["selector"], p.labels) for p in members),
                      f"{name}: headless Service {svc} does not select every rank")
        if kind == "LeaderWorkerSet":
            check(spec.get("startupPolicy", "LeaderCreated") == "LeaderCreated",
                  f"{name}: startupPolicy must be LeaderCreated (rank 0 is ready only after every rank joined)")
            check(spec["leaderWorkerTemplate"].get("restartPolicy") == "RecreateGroupOnPodRestart",
                  f"{name}: a failed rank must recreate the group (RecreateGroupOnPodRestart)")
        else:
            check(spec.get("podManagementPolicy") == "Parallel", f"{name}: ranks must start in parallel")
            check(spec.get("replicas") == len(group_pods), f"{name}: replicas != world size")


def policy_selects(selector, labels):
    """Whether a NetworkPolicy's LabelSelector (matchLabels only, as the chart writes them)
    selects `labels`."""
    check(not selector.get("matchExpressions"), "selector with matchExpressions: not checked here")
    return selects(selector.get("matchLabels") or {}, labels)


def check_stage_access(pods, objs):
    """Stage token and NetworkPolicies: every pod gets --stage-token-file from a mounted Secret
    the release has (or the one values name); the stages listen beyond loopback (their default),
    and their gRPC port admits the orchestrator's pods alone; denoise pods admit each other."""
    stages = ("diffmesh-ar", "diffmesh-encoder", "diffmesh-denoise")
    orchestrators = [p for p in pods if p.binary == "diffmesh-orchestrator"]
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    for pod in pods:
        path = pod.flags.get("stage_token_file")
        check(path, f"{pod}: no --stage-token-file")
        mounts = {m["mountPath"]: m["name"] for m in pod.container.get("volumeMounts") or []}
        vols = {v["name"]: v for v in pod.spec.get("volumes") or []}
        secret = (vols.get(mounts.get(os.path.dirname(path)), {}).get("secret") or {}).get("secretName")
        check(secret, f"{pod}: --stage-token-file {path} is not in a mounted Secret")
        check(secret in secrets or secret == "my-stage-token",
              f"{pod}: Secret {secret} is neither rendered nor the existingSecret of the case")
        if pod.binary not in stages:
            continue
        check(pod.flags.get("host") not in (None, "127.0.0.1", "localhost"),
              f"{pod}: {pod.binary} listens on loopback (its default): unreachable from the orchestrator")
        mine = [np for np in policies if policy_selects(np["spec"]["podSelector"], pod.labels)]
        check(len(mine) == 1, f"{pod}: {len(mine)} NetworkPolicies select it, want 1")
        spec = mine[0]["spec"]
        check(spec.get("policyTypes") == ["Ingress"], f"{pod}: policyTypes {spec.get('policyTypes')}")
        port = int(pod.flags["port"])
        for rule in spec.get("ingress") or []:
            ports = {p.get("port") for p in rule.get("ports") or []}
            if rule.get("ports") and port not in ports:
                continue  # another port (metrics)
            sources = rule.get("from")
            check(sources, f"{pod}: an ingress rule opens --port {port} to everyone")
            for src in sources:
                check(set(src) == {"podSelector"}, f"{pod}: ingress source {src} is not a pod selector")
                admitted = [p for p in pods if policy_selects(src["podSelector"], p.labels)]
                check(admitted, f"{pod}: ingress source {src} selects no pod")
                allowed = set(orchestrators) | (set(p for p in pods if p.is_rank)
                                                if pod.is_rank else set())
                check(set(admitted) <= allowed,
                      f"{pod}: --port {port} admits {sorted(str(p) for p in set(admitted) - allowed)}")
        grpc_from = [src for rule in spec.get("ingress") or [] if port in {p.get("port") for p in rule.get("ports") or []}
                     for src in rule.get("from") or []]
        check(all(o in [p for src in grpc_from for p in pods if policy_selects(src["podSelector"], p.labels)]
                  for o in orchestrators), f"{pod}: the orchestrator cannot reach --port {port}")


def check_services(pods, objs):
    for svc in (o for o in objs if o["kind"] == "Service"):
        name, spec = svc["metadata"]["name"], svc["spec"]
        selected = [p for p in pods if selects(spec.get("selector"), p.labels)]
        check(selected, f"Service {name} selects no pod")
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port["port"])
            for p in selected:
                if isinstance(target, str):
                    check(target in p.ports, f"Service {name} port {port.get('name')}: {p} has no port named {target}")
                else:
                    check(target in p.ports.values(), f"Service {name}: {p} has no port {target}")
            if port.get("name") == "grpc":
                for p in selected:
                    check(p.ports.get("grpc") == int(p.flags.get("port", -1)),
                          f"Service {name}: {p} does not serve gRPC on its `grpc` port")
        if name.endswith("-denoise"):
            check(all(p.flags.get("rank") == "0" for p in selected),
                  f"Service {name} selects ranks {[p.flags.get('rank') for p in selected]}: only rank 0 serves gRPC")
    for w in (o for o in objs if o["kind"] in ("Deployment", "StatefulSet")):
        check(selects(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]),
              f"{w['kind']} {w['metadata']['name']}: selector does not match its pod template")


def check_pipeline(pods, objs, namespace, domain, orchestrator, work_dir, source_dir, case_args):
    orch = [p for p in pods if p.binary == "diffmesh-orchestrator"]
    check(orch, "no orchestrator pod")
    p = orch[0]
    path = p.flags.get("pipeline")
    check(path, f"{p}: no --pipeline")
    mounts = {m["mountPath"]: m["name"] for m in p.container.get("volumeMounts") or []}
    vols = {v["name"]: v for v in p.spec.get("volumes") or []}
    vol = vols.get(mounts.get(os.path.dirname(path)), {})
    cm_name = (vol.get("configMap") or {}).get("name")
    cms = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name]
    check(cms, f"{p}: --pipeline={path} is not in a mounted ConfigMap")
    text = (cms[0].get("data") or {}).get(os.path.basename(path))
    check(text, f"ConfigMap {cm_name} has no key {os.path.basename(path)}")
    config = json.loads(text)
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    for stage, address in config["services"].items():
        host, _, port = address.rpartition(":")
        m = re.fullmatch(rf"([a-z0-9-]+)\.{re.escape(namespace)}\.svc\.{re.escape(domain)}", host)
        check(m and m.group(1) in services, f"pipeline service {stage}: {address} is not a Service of the release")
        svc = services[m.group(1)]
        grpc_ports = [sp["port"] for sp in svc["spec"]["ports"] if sp.get("name") == "grpc"]
        check(int(port) in grpc_ports, f"pipeline service {stage}: {address}: Service port {port} is not its grpc port")
        targets = [q for q in pods if selects(svc["spec"].get("selector"), q.labels)]
        # The decode service is diffmesh-denoise --role decode; the others the stage's binary.
        want = ("diffmesh-denoise", "decode") if stage == "decode" else (f"diffmesh-{stage}", "denoise")
        check(targets and all(q.binary == want[0] and (q.binary != "diffmesh-denoise" or
                                                        q.flags.get("role", "denoise") == want[1])
                              for q in targets),
              f"pipeline service {stage}: {address} reaches {[q.binary for q in targets]}")
    # Every "decode" stage runs where the values put decoding.
    for model in config["models"]:
        for st in model.get("stages", []):
            if st.get("kind") == "decode":
                check(st["service"] in config["services"],
                      f"model {model['name']}: decode stage on unknown service {st['service']}")
    if not case_args:
        default = json.load(open(os.path.join(source_dir, "common/config/default_pipeline.json")))
        check(config["models"] == default["models"] and config["default_model"] == default["default_model"],
              "the default values' pipeline models differ from common/config/default_pipeline.json")
    if orchestrator is None:
        return
    # The real orchestrator must accept the config (it parses and validates it before serving).
    cfg = os.path.join(work_dir, "pipeline.json")
    with open(cfg, "w") as f:
        f.write(text)
    proc = subprocess.Popen([orchestrator.path, f"--pipeline={cfg}", "--host=127.0.0.1", "--port=0",
                             "--metrics-port=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    try:
        deadline = time.time() + 30
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.time() < deadline and "serving on" not in out:
            if sel.select(timeout=0.5):
                line = proc.stdout.readline()
                if not line:
                    break
                out += line
        check("serving on" in out, f"diffmesh-orchestrator rejects the rendered pipeline config:\n{out}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_dashboard(objs, source_dir, case_args):
    chart_copy = os.path.join(source_dir, "helm/diffmesh/dashboards/diffmesh.json")
    link = os.path.join(source_dir, "deploy/grafana/diffmesh.json")
    check(os.path.islink(link) and os.path.realpath(link) == os.path.realpath(chart_copy),
          "deploy/grafana/diffmesh.json must be a symlink to the chart's dashboards/diffmesh.json")
    cms = [o for o in objs if o["kind"] == "ConfigMap" and (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    check(len(cms) == 1, f"{len(cms)} ConfigMaps labelled grafana_dashboard: \"1\"")
    data = cms[0]["data"]["diffmesh.json"]
    check(len(data.encode()) < 1 << 20, "the dashboard ConfigMap exceeds the 1 MiB object limit")
    check(json.loads(data) == json.load(open(chart_copy)), "the dashboard ConfigMap differs from dashboards/diffmesh.json")


def check_service_monitor(pods, objs, namespace):
    sms = [o for o in objs if o["kind"] == "ServiceMonitor"]
    if not sms:
        return False
    sm = sms[0]["spec"]
    check(namespace in (sm.get("namespaceSelector") or {}).get("matchNames", []), "ServiceMonitor: not the release namespace")
    ports = {e.get("port") for e in sm["endpoints"]}
    scraped = {}
    for svc in (o for o in objs if o["kind"] == "Service"):
        if not selects(sm["selector"].get("matchLabels"), svc["metadata"].get("labels") or {}):
            continue
        for sp in svc["spec"].get("ports") or []:
            if sp.get("name") in ports:
                for p in pods:
                    if selects(svc["spec"].get("selector"), p.labels):
                        scraped.setdefault(p.name, []).append(svc["metadata"]["name"])
    for p in pods:
        serves = p.role in ("replica", "leader", "rank 0")
        if serves:
            check(p.name in scraped, f"ServiceMonitor does not scrape {p}")
        check(len(scraped.get(p.name, [])) <= 1, f"ServiceMonitor scrapes {p} twice: {scraped.get(p.name)}")
    return True


def adapter_rule(source_dir):
    import yaml
    doc = yaml.safe_load(open(os.path.join(source_dir, "helm/diffmesh/docs/prometheus-adapter-values.yaml")))
    rule = doc["rules"]["custom"][0]
    return rule


def check_autoscaling(objs, source_dir, namespace):
    families = open(os.path.join(source_dir, "common/metrics/families.cc")).read()
    check('"diffmesh_queue_duration_seconds"' in families, "common/metrics declares no diffmesh_queue_duration_seconds")
    for o in objs:
        if o["kind"] not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        spec = o["spec"]
        ref = spec["scaleTargetRef"]
        targets = [w for w in objs if w["kind"] == ref.get("kind") and w["metadata"]["name"] == ref["name"]
                   and w["apiVersion"] == ref.get("apiVersion")]
        check(targets, f"{o['kind']} scales {ref}, which the chart does not render")
        check("replicas" not in targets[0]["spec"], f"{ref['name']}: the autoscaler owns replicas; the chart must not set them")
        orch_svc = [s for s in objs if s["kind"] == "Service" and s["metadata"]["name"].endswith("-orchestrator")]
        check(orch_svc, "autoscaling without an orchestrator Service")
        orch_svc = orch_svc[0]["metadata"]["name"]
        if o["kind"] == "HorizontalPodAutoscaler":
            check(spec["minReplicas"] <= spec["maxReplicas"], "HPA: minReplicas > maxReplicas")
            metric = spec["metrics"][0]
            check(metric["type"] == "Object" and metric["object"]["describedObject"]["name"] == orch_svc,
                  f"HPA metric is not on the orchestrator Service: {metric}")
            rule = adapter_rule(source_dir)
            check(metric["object"]["metric"]["name"] == rule["name"]["as"],
                  f"HPA metric {metric['object']['metric']['name']} is not the prometheus-adapter rule's {rule['name']['as']}")
            check("diffmesh_queue_duration_seconds" in rule["seriesQuery"] and
                  {"namespace", "service"} <= set(rule["resources"]["overrides"]),
                  "the prometheus-adapter rule does not map the queue-time series to Services")
        else:
            check(spec["minReplicaCount"] <= spec["maxReplicaCount"], "ScaledObject: minReplicaCount > maxReplicaCount")
            q = spec["triggers"][0]["metadata"]["query"]
            check(f'service="{orch_svc}"' in q and f'namespace="{namespace}"' in q
                  and "diffmesh_queue_duration_seconds" in q, f"KEDA query does not read the orchestrator's queue time: {q}")


def run_case(title, args, namespace, ctx):
    import yaml
    import k8s_schema
    rc, out, err = render(ctx["renderer"], ctx["source"], args, namespace)
    check(rc == 0, f"rendering failed:\n{err}")
    objs = [d for d in yaml.safe_load_all(out) if d is not None]
    problems = []
    for o in objs:
        problems += k8s_schema.validate(o)
        check(not (o.get("metadata") or {}).get("namespace") or o["metadata"]["namespace"] == namespace,
              f"{o['kind']} {o['metadata']['name']}: namespace")
    check(not problems, "schema:\n  " + "\n  ".join(problems))
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    check(len(names) == len(set(names)), f"duplicate objects: {names}")
    domain = "cluster.local"
    pods = expand_pods(objs, namespace)
    check_containers(pods, ctx["binaries"], ctx["seen"])
    check_denoise_groups(pods, objs, namespace, domain)
    check_services(pods, objs)
    check_stage_access(pods, objs)
    check_pipeline(pods, objs, namespace, domain, ctx["binaries"].get("diffmesh-orchestrator"), ctx["work"], ctx["source"], args)
    check_dashboard(objs, ctx["source"], args)
    monitored = check_service_monitor(pods, objs, namespace)
    check_autoscaling(objs, ctx["source"], namespace)
    kinds = sorted({o["kind"] for o in objs})
    log(f"ok   {title}: {len(objs)} objects ({', '.join(kinds)}), {len(pods)} pods"
        f"{', scraped' if monitored else ''}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--binary", action="append", default=[], help="diffmesh-x=PATH")
    a = ap.parse_args()
    try:
        import yaml  # noqa: F401
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import k8s_schema  # noqa: F401
    except ImportError as e:
        skip(f"{e} (apt-get install python3-kubernetes python3-yaml; run with Debian's /usr/bin/python3)")
    os.makedirs(a.work_dir, exist_ok=True)
    start = time.time()
    ctx = {"source": os.path.abspath(a.source_dir), "work": os.path.abspath(a.work_dir), "binaries": {}, "seen": set()}
    try:
        ctx["renderer"] = build_renderer(ctx["source"], ctx["work"])
        log(f"built helm-render ({time.time() - start:.1f} s)")
        for spec in a.binary:
            name, _, path = spec.partition("=")
            if not os.path.exists(path):
                raise Failure(f"{path} is not built (cmake --build . --target {name})")
            ctx["binaries"][name] = Binary(name, path, ctx["source"])
        failed = 0
        for title, args, namespace in CASES:
            try:
                run_case(title, args, namespace, ctx)
            except Failure as e:
                failed += 1
                log(f"FAIL {title}: {e}")
        for args, message in FAILURES:
            rc, _, err = render(ctx["renderer"], ctx["source"], args, "default")
            if rc == 0 or message not in err:
                failed += 1
                log(f"FAIL {' '.join(args)} should fail with {message!r}; got rc {rc}: {err.strip()}")
            else:
                log(f"ok   {' '.join(args)} fails: {message}")
        missing = {b.split('=')[0] for b in a.binary} - ctx["seen"]
        if missing:
            log(f"note: no rendered container ran {sorted(missing)}")
    except Failure as e:
        log(f"FAIL {e}")
        return 1
    log(f"{'FAILED' if failed else 'passed'} in {time.time() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
