// helm-render renders a Helm chart the way `helm template` does, without Helm: Go's
// text/template with the sprig function library, plus Helm's own functions (include, tpl,
// required, toYaml, fromYaml, toJson, fromJson, lookup) and built-in objects (.Values, .Release,
// .Chart, .Files, .Capabilities, .Template). Values: the chart's values.yaml, then each -f file,
// then --set / --set-string, merged as Helm merges them.
//
//	helm-render [--name R] [--namespace N] [-f FILE]... [--set K=V]... [--set-string K=V]... CHART_DIR
//
// Writes the manifests to stdout, each document headed by "# Source: <chart>/templates/<file>".
// Exits 1 with the template error (e.g. from `required` or `fail`) on stderr.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// Files is .Files: the chart's files outside templates/, by path relative to the chart.
type Files map[string][]byte

func (f Files) Get(name string) string      { return string(f[name]) }
func (f Files) GetBytes(name string) []byte { return f[name] }

func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

func (f Files) Lines(name string) []string {
	s := strings.TrimSuffix(string(f[name]), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// APIVersions is .Capabilities.APIVersions.
type APIVersions []string

func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func main() {
	var valueFiles, sets, setStrings, apiVersions multiFlag
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities")
	flag.Var(&valueFiles, "f", "values file (repeatable; later files win)")
	flag.Var(&valueFiles, "values", "values file (same as -f)")
	flag.Var(&sets, "set", "key=value[,key=value] (repeatable)")
	flag.Var(&setStrings, "set-string", "key=value[,key=value] with string values (repeatable)")
	flag.Var(&apiVersions, "api-versions", "extra API versions for .Capabilities.APIVersions.Has (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helm-render [--name R] [--namespace N] [-f FILE]... [--set K=V]... CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), *name, *namespace, *kubeVersion, valueFiles, sets, setStrings, apiVersions)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func readYAMLMap(file string) (map[string]interface{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

// mergeValues merges src into dst as Helm coalesces user values over chart values: maps merge
// key by key, anything else replaces, and null deletes the key.
func mergeValues(dst, src map[string]interface{}) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				mergeValues(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// Chart.yaml keys as Helm's chart.Metadata fields (.Chart.Name, .Chart.AppVersion, ...).
func chartObject(meta map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range meta {
		switch k {
		case "apiVersion":
			out["APIVersion"] = v
		default:
			out[strings.ToUpper(k[:1])+k[1:]] = v
		}
	}
	return out
}

func render(chartDir, name, namespace, kubeVersion string, valueFiles, sets, setStrings, apiVersions []string) (string, error) {
	meta, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	chartName, _ := meta["name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml has no name")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, f := range valueFiles {
		m, err := readYAMLMap(f)
		if err != nil {
			return "", err
		}
		mergeValues(values, m)
	}
	for _, s := range sets {
		if err := parseSet(s, values, false); err != nil {
			return "", fmt.Errorf("--set %s: %w", s, err)
		}
	}
	for _, s := range setStrings {
		if err := parseSet(s, values, true); err != nil {
			return "", fmt.Errorf("--set-string %s: %w", s, err)
		}
	}

	files := Files{}
	var templates []string // paths relative to the chart dir, e.g. templates/ar.yaml
	err = filepath.Walk(chartDir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(chartDir, p)
		rel = filepath.ToSlash(rel)
		if strings.HasPrefix(rel, "templates/") {
			templates = append(templates, rel)
			return nil
		}
		if rel == "Chart.yaml" || rel == "values.yaml" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = data
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(templates)

	major, minor := "1", "30"
	if parts := strings.SplitN(strings.TrimPrefix(kubeVersion, "v"), ".", 3); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	builtinAPIs := APIVersions{"v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2",
		"policy/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": "Helm", "Revision": 1,
			"IsInstall": true, "IsUpgrade": false,
		},
		"Chart": chartObject(meta),
		"Files": files,
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": kubeVersion, "GitVersion": kubeVersion, "Major": major, "Minor": minor,
			},
			"APIVersions": append(builtinAPIs, apiVersions...),
		},
	}

	t := template.New("gotpl")
	includeDepth := 0
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // Helm removes these two
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["fromYamlArray"] = func(s string) []interface{} {
		var a []interface{}
		if err := yaml.Unmarshal([]byte(s), &a); err != nil {
			a = []interface{}{err.Error()}
		}
		return a
	}
	funcs["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	funcs["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil // as `helm template`: no cluster
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		includeDepth++
		defer func() { includeDepth-- }()
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: nested too deeply", name)
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		tt, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("tpl %q: %w", text, err)
		}
		var buf bytes.Buffer
		if err := tt.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("tpl %q: %w", text, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	t.Funcs(funcs).Option("missingkey=zero")

	for _, rel := range templates {
		data, err := os.ReadFile(filepath.Join(chartDir, rel))
		if err != nil {
			return "", err
		}
		if _, err := t.New(chartName + "/" + rel).Parse(string(data)); err != nil {
			return "", err
		}
	}

	var out strings.Builder
	for _, rel := range templates {
		base := path.Base(rel)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		full := chartName + "/" + rel
		scope := map[string]interface{}{}
		for k, v := range top {
			scope[k] = v
		}
		scope["Template"] = map[string]interface{}{"Name": full, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, full, scope); err != nil {
			return "", err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range splitDocuments(text) {
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", full, doc)
		}
	}
	return out.String(), nil
}

// splitDocuments splits rendered text at "---" lines and drops the documents that hold only
// whitespace, as Helm drops empty manifests.
func splitDocuments(text string) []string {
	var docs []string
	var cur []string
	flush := func() {
		doc := strings.Trim(strings.Join(cur, "\n"), "\n")
		if strings.TrimSpace(doc) != "" {
			docs = append(docs, doc)
		}
		cur = nil
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimRight(line, " \t") == "---" {
			flush()
			continue
		}
		cur = append(cur, line)
	}
	flush()
	return docs
}

// parseSet applies one --set / --set-string argument as Helm's strvals does: comma-separated
// key=value pairs; dotted keys; name[i] list indices; {a,b} lists; backslash escapes. --set
// types true/false, null and integers; --set-string keeps every value a string.
func parseSet(arg string, values map[string]interface{}, asString bool) error {
	for _, pair := range splitUnescaped(arg, ',', true) {
		if pair == "" {
			continue
		}
		eq := indexUnescaped(pair, '=')
		if eq < 0 {
			return fmt.Errorf("%q: key without a value", pair)
		}
		key, raw := pair[:eq], pair[eq+1:]
		var value interface{}
		if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
			var list []interface{}
			for _, item := range splitUnescaped(raw[1:len(raw)-1], ',', false) {
				list = append(list, typed(unescape(item), asString))
			}
			value = list
		} else {
			value = typed(unescape(raw), asString)
		}
		if err := setPath(values, splitUnescaped(key, '.', false), value); err != nil {
			return err
		}
	}
	return nil
}

func typed(s string, asString bool) interface{} {
	if asString {
		return s
	}
	switch s {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if s == "0" || (len(s) > 0 && s[0] != '0' && !(len(s) > 1 && s[0] == '-' && s[1] == '0')) {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n
		}
	}
	return s
}

func setPath(m map[string]interface{}, keys []string, value interface{}) error {
	if len(keys) == 0 {
		return errors.New("empty key")
	}
	key := unescape(keys[0])
	index := -1
	if open := strings.Index(key, "["); open > 0 && strings.HasSuffix(key, "]") {
		n, err := strconv.Atoi(key[open+1 : len(key)-1])
		if err != nil || n < 0 {
			return fmt.Errorf("bad list index in %q", key)
		}
		key, index = key[:open], n
	}
	last := len(keys) == 1
	if index < 0 {
		if last {
			if value == nil {
				delete(m, key)
			} else {
				m[key] = value
			}
			return nil
		}
		child, ok := m[key].(map[string]interface{})
		if !ok {
			child = map[string]interface{}{}
			m[key] = child
		}
		return setPath(child, keys[1:], value)
	}
	list, _ := m[key].([]interface{})
	for len(list) <= index {
		list = append(list, nil)
	}
	if last {
		list[index] = value
	} else {
		child, ok := list[index].(map[string]interface{})
		if !ok {
			child = map[string]interface{}{}
			list[index] = child
		}
		if err := setPath(child, keys[1:], value); err != nil {
			return err
		}
	}
	m[key] = list
	return nil
}

// splitUnescaped splits at sep outside backslash escapes (and, with braces, outside {...}).
func splitUnescaped(s string, sep byte, braces bool) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++
		case braces && s[i] == '{':
			depth++
		case braces && s[i] == '}':
			depth--
		case s[i] == sep && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func indexUnescaped(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
		} else if s[i] == c {
			return i
		}
	}
	return -1
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
