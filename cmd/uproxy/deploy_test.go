package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// deployObjects decodes every document of every YAML file in deploy/ into
// typed objects, strictly (unknown or duplicate fields fail, as
// kubectl apply --validate=strict would).
func deployObjects(t *testing.T) []runtime.Object {
	t.Helper()
	files, err := filepath.Glob("../../deploy/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/*.yaml: %v", err)
	}
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var objs []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for i := 1; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

func one[T runtime.Object](t *testing.T, objs []runtime.Object) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("deploy/ has %d objects of type %T, want 1", len(found), zero)
	}
	return found[0]
}

func TestDeployRBAC(t *testing.T) {
	objs := deployObjects(t)
	role := one[*rbacv1.ClusterRole](t, objs)
	type grant struct{ group, resource, verb string }
	var got []grant
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v uses resourceNames/nonResourceURLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, grant{g, res, v})
				}
			}
		}
	}
	want := []grant{
		{"", "events", "create"}, {"", "events", "patch"},
		{"", "nodes", "list"}, {"", "nodes", "watch"},
		{"", "services", "list"}, {"", "services", "watch"},
		{"discovery.k8s.io", "endpointslices", "list"}, {"discovery.k8s.io", "endpointslices", "watch"},
	}
	cmp := func(a, b grant) int {
		return strings.Compare(a.group+"/"+a.resource+"/"+a.verb, b.group+"/"+b.resource+"/"+b.verb)
	}
	slices.SortFunc(got, cmp)
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole grants\n got %v\nwant %v", got, want)
	}

	binding := one[*rbacv1.ClusterRoleBinding](t, objs)
	sa := one[*v1.ServiceAccount](t, objs)
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != role.Name {
		t.Errorf("binding roleRef %+v, want ClusterRole %s", binding.RoleRef, role.Name)
	}
	if len(binding.Subjects) != 1 || binding.Subjects[0].Kind != "ServiceAccount" ||
		binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding subjects %+v, want ServiceAccount %s/%s", binding.Subjects, sa.Namespace, sa.Name)
	}
}

func TestDeployDaemonSet(t *testing.T) {
	objs := deployObjects(t)
	ds := one[*appsv1.DaemonSet](t, objs)
	sa := one[*v1.ServiceAccount](t, objs)
	spec := ds.Spec.Template.Spec
	if ds.Namespace != sa.Namespace || spec.ServiceAccountName != sa.Name {
		t.Errorf("DaemonSet %s/%s runs as %q, want the ServiceAccount %s/%s", ds.Namespace, ds.Name, spec.ServiceAccountName, sa.Namespace, sa.Name)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork is not set")
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tl v1.Toleration) bool {
		return tl.Operator == v1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("no toleration of every taint: %+v", spec.Tolerations)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxSurge == nil || us.RollingUpdate.MaxSurge.String() != "1" ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.String() != "0" {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxSurge 1 maxUnavailable 0", us)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

	// The arguments are valid uproxy flags (with the env var expanded).
	var args []string
	for _, a := range c.Args {
		args = append(args, strings.ReplaceAll(a, "$(NODE_NAME)", "node-1"))
	}
	opts, err := parseFlags(args)
	if err != nil {
		t.Fatalf("container args %q: %v", c.Args, err)
	}
	if opts.HostnameOverride != "node-1" {
		t.Errorf("--hostname-override not from $(NODE_NAME): %q", c.Args)
	}
	if !slices.ContainsFunc(c.Env, func(e v1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Errorf("NODE_NAME is not from the downward API spec.nodeName: %+v", c.Env)
	}
	if grace := spec.TerminationGracePeriodSeconds; grace == nil || float64(*grace) <= opts.ShutdownGrace.Seconds() {
		t.Errorf("terminationGracePeriodSeconds %v must exceed --shutdown-grace %s", grace, opts.ShutdownGrace)
	}

	probe := func(name string, p *v1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != 10256 {
			t.Errorf("%s probe %+v, want GET %s on 10256", name, p, path)
		}
	}
	probe("readiness", c.ReadinessProbe, "/healthz")
	probe("liveness", c.LivenessProbe, "/livez")

	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []v1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	if !slices.Equal(add, []v1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("capabilities add %v, want exactly NET_ADMIN, NET_RAW", sc.Capabilities.Add)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container is privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem is writable")
	}
}
