package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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
	var objs []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decodeYAML(t, f, data)...)
	}
	return objs
}

// decodeYAML decodes every document of data (named name) strictly.
func decodeYAML(t *testing.T, name string, data []byte) []runtime.Object {
	t.Helper()
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s document %d: %v", name, i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s document %d: %v", name, i, err)
		}
		objs = append(objs, obj)
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
	if len(spec.Containers) != 2 || spec.Containers[0].Name != "uproxy" || spec.Containers[1].Name != "fd-holder" {
		t.Fatalf("%d containers, want uproxy and fd-holder", len(spec.Containers))
	}
	c := spec.Containers[0]

	// The arguments are valid uproxy flags.
	opts := daemonSetFlags(t, c)
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

	// No ports: with hostNetwork a containerPort becomes a hostPort, and the
	// scheduler refuses the surge pod on a node whose old pod holds it.
	if len(c.Ports) > 0 {
		t.Errorf("container ports %+v: with hostNetwork they become hostPorts and block the surge rollout", c.Ports)
	}

	// The API server is reached at its real address, from kubeadm's
	// kube-proxy kubeconfig, with the pod's own token: never through the
	// kubernetes Service, which only a service proxy makes reachable.
	mounts := map[string]v1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]v1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mountedVolume := func(file string) (v1.Volume, v1.VolumeMount) {
		t.Helper()
		m, ok := mounts[filepath.Dir(file)]
		if !ok {
			t.Fatalf("%s: its directory is not a volume mount (%+v)", file, c.VolumeMounts)
		}
		return volumes[m.Name], m
	}
	if opts.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" {
		t.Errorf("--kubeconfig %q, want kube-proxy's /var/lib/kube-proxy/kubeconfig.conf", opts.Kubeconfig)
	}
	kv, km := mountedVolume(opts.Kubeconfig)
	cm := kv.ConfigMap
	if cm == nil || cm.Name != "kube-proxy" || (cm.Optional != nil && *cm.Optional) || !km.ReadOnly ||
		!slices.Equal(cm.Items, []v1.KeyToPath{{Key: "kubeconfig.conf", Path: filepath.Base(opts.Kubeconfig)}}) {
		t.Errorf("--kubeconfig volume %+v mounted %+v, want the required ConfigMap kube-proxy key kubeconfig.conf, read-only", kv, km)
	}
	if spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken is false: the kubeconfig's tokenFile is the pod's token")
	}

	// The probes exec `uproxy probe` on the pod-private health socket.
	if opts.HealthSocket == "" {
		t.Fatal("no --health-socket")
	}
	if sv, _ := mountedVolume(opts.HealthSocket); sv.EmptyDir == nil {
		t.Errorf("--health-socket %s is not in an emptyDir (%+v): the socket must be private to the pod", opts.HealthSocket, sv)
	}
	// The fd holder: a second container (stopped with uproxy when the pod
	// goes away, untouched when only uproxy's container restarts) serving
	// --fd-holder-socket in the same emptyDir, unprivileged, in uproxy's
	// group (the socket is mode 0660).
	if opts.FDHolderSocket == "" {
		t.Fatal("no --fd-holder-socket")
	}
	if fv, _ := mountedVolume(opts.FDHolderSocket); fv.EmptyDir == nil {
		t.Errorf("--fd-holder-socket %s is not in an emptyDir (%+v)", opts.FDHolderSocket, fv)
	}
	h := spec.Containers[1]
	if h.Image != c.Image || len(h.Command) != 0 || len(h.Args) < 1 || h.Args[0] != fdHolderCommand {
		t.Errorf("fd holder runs %q %q in %s, want the uproxy image's entrypoint with %s", h.Command, h.Args, h.Image, fdHolderCommand)
	} else {
		var ho fdHolderOptions
		if err := fdHolderFlagSet(&ho).Parse(h.Args[1:]); err != nil || ho.socket != opts.FDHolderSocket {
			t.Errorf("fd holder args %q (%v): socket %q, want --fd-holder-socket %s", h.Args, err, ho.socket, opts.FDHolderSocket)
		}
	}
	if !slices.ContainsFunc(h.VolumeMounts, func(m v1.VolumeMount) bool {
		return m.Name == mounts[filepath.Dir(opts.FDHolderSocket)].Name && m.MountPath == filepath.Dir(opts.FDHolderSocket)
	}) {
		t.Errorf("fd holder mounts %+v, want uproxy's %s", h.VolumeMounts, filepath.Dir(opts.FDHolderSocket))
	}
	hs := h.SecurityContext
	if hs == nil || hs.RunAsUser == nil || *hs.RunAsUser == 0 || hs.RunAsNonRoot == nil || !*hs.RunAsNonRoot ||
		hs.Capabilities == nil || !slices.Equal(hs.Capabilities.Drop, []v1.Capability{"ALL"}) || len(hs.Capabilities.Add) > 0 ||
		hs.AllowPrivilegeEscalation == nil || *hs.AllowPrivilegeEscalation || hs.ReadOnlyRootFilesystem == nil || !*hs.ReadOnlyRootFilesystem {
		t.Errorf("fd holder securityContext %+v, want non-root, no capabilities, read-only", hs)
	}
	if us := c.SecurityContext; hs == nil || hs.RunAsGroup == nil || us == nil || us.RunAsGroup == nil || *hs.RunAsGroup != *us.RunAsGroup {
		t.Errorf("fd holder and uproxy must share a group for the socket (runAsGroup)")
	}

	// The state checkpoint is on the host (it must outlive the pod), in a
	// writable mount: the root filesystem stays read-only.
	if opts.CheckpointPath == "" {
		t.Fatal("the state checkpoint is off (--checkpoint-path)")
	}
	stv, stm := mountedVolume(opts.CheckpointPath)
	if hp := stv.HostPath; hp == nil || hp.Path != filepath.Dir(opts.CheckpointPath) || hp.Type == nil ||
		*hp.Type != v1.HostPathDirectoryOrCreate || stm.ReadOnly {
		t.Errorf("--checkpoint-path %s: volume %+v mounted %+v, want the host's %s (DirectoryOrCreate), read-write",
			opts.CheckpointPath, stv, stm, filepath.Dir(opts.CheckpointPath))
	}

	probe := func(name string, p *v1.Probe, path string) {
		t.Helper()
		if p == nil || p.Exec == nil || p.HTTPGet != nil || p.TCPSocket != nil || p.GRPC != nil {
			t.Errorf("%s probe %+v, want exec only", name, p)
			return
		}
		cmd := p.Exec.Command
		if len(cmd) < 2 || cmd[0] != "/usr/local/bin/uproxy" || cmd[1] != probeCommand {
			t.Errorf("%s probe runs %q, want /usr/local/bin/uproxy probe ...", name, cmd)
			return
		}
		po, err := parseProbeFlags(cmd[2:])
		if err != nil {
			t.Errorf("%s probe %q: %v", name, cmd, err)
			return
		}
		if po.socket != opts.HealthSocket || po.path != path {
			t.Errorf("%s probe asks %s on %s, want %s on --health-socket %s", name, po.path, po.socket, path, opts.HealthSocket)
		}
		if timeout := time.Duration(p.TimeoutSeconds) * time.Second; po.timeout >= timeout {
			t.Errorf("%s probe: uproxy probe --timeout %s is not under timeoutSeconds %s", name, po.timeout, timeout)
		}
	}
	probe("readiness", c.ReadinessProbe, "/healthz")
	probe("liveness", c.LivenessProbe, "/livez")
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dockerfile), "COPY --from=build /out/uproxy /usr/local/bin/uproxy") {
		t.Error("the Dockerfile does not put the binary at /usr/local/bin/uproxy, where the probes run it")
	}

	// Instead of kube-proxy (the default): kube-proxy's ports.
	if opts.ServiceProxyName != "" || opts.HealthzBindAddress != "0.0.0.0:10256" || opts.MetricsBindAddress != "127.0.0.1:10249" {
		t.Errorf("default args: --service-proxy-name %q, healthz %s, metrics %s; want kube-proxy's", opts.ServiceProxyName, opts.HealthzBindAddress, opts.MetricsBindAddress)
	}

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

// daemonSetFlags parses the container's arguments (with $(NODE_NAME) set to
// node-1) as uproxy does.
func daemonSetFlags(t *testing.T, c v1.Container) *options {
	t.Helper()
	var args []string
	for _, a := range c.Args {
		args = append(args, strings.ReplaceAll(a, "$(NODE_NAME)", "node-1"))
	}
	opts, err := parseFlags(args)
	if err != nil {
		t.Fatalf("container args %q: %v", c.Args, err)
	}
	return opts
}

// TestDeployOptionA uncomments the option-A lines of deploy/daemonset.yaml
// as a user (or a test) would, mechanically: every "# - --" line, all of
// them in one block right under the only "Option A" comment (the node
// tests uncomment the lines that follow that comment). uproxy then runs
// beside kube-proxy: labelled Services only, and ports that collide with
// neither kube-proxy nor the other node components.
func TestDeployOptionA(t *testing.T) {
	const file = "../../deploy/daemonset.yaml"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	commented := regexp.MustCompile(`^(\s*)# (- --\S+)$`)
	lines := strings.Split(string(data), "\n")
	marker, first, last := -1, -1, -1
	for i, line := range lines {
		if strings.Contains(line, "# Option A (beside kube-proxy): uncomment these") {
			marker = i
		}
		if strings.HasPrefix(strings.TrimSpace(line), "# - --") {
			if !commented.MatchString(line) {
				t.Errorf("line %d %q: want \"# - --flag=value\" and nothing after it", i+1, line)
			}
			if first < 0 {
				first = i
			}
			if last >= 0 && i != last+1 {
				t.Errorf("line %d: option-A lines are not one block (previous at line %d)", i+1, last+1)
			}
			last = i
			lines[i] = commented.ReplaceAllString(line, "$1$2")
		}
	}
	if marker < 0 || first != marker+1 || strings.Count(string(data), "Option A") != 1 {
		t.Fatalf("want one \"# Option A (beside kube-proxy): uncomment these\" comment right above the commented args (marker line %d, first arg line %d)", marker+1, first+1)
	}
	c := one[*appsv1.DaemonSet](t, decodeYAML(t, file+" (option A)", []byte(strings.Join(lines, "\n")))).Spec.Template.Spec.Containers[0]
	opts := daemonSetFlags(t, c)
	if opts.ServiceProxyName != "uproxy" {
		t.Errorf("option A: --service-proxy-name %q, want uproxy (the README labels Services with it)", opts.ServiceProxyName)
	}
	taken := map[int]string{10248: "kubelet healthz", 10250: "kubelet", 10255: "kubelet read-only", 10257: "kube-controller-manager",
		10259: "kube-scheduler", 10249: "kube-proxy metrics", 10256: "kube-proxy healthz"}
	for flag, addr := range map[string]string{"--healthz-bind-address": opts.HealthzBindAddress, "--metrics-bind-address": opts.MetricsBindAddress} {
		_, port, _ := strings.Cut(addr, ":")
		n, err := strconv.Atoi(port)
		if addr == "" || err != nil || n == 0 {
			t.Errorf("option A: %s %q, want a fixed port", flag, addr)
		}
		if who, ok := taken[n]; ok {
			t.Errorf("option A: %s %s collides with %s", flag, addr, who)
		}
	}
	if opts.HealthzBindAddress == opts.MetricsBindAddress {
		t.Errorf("option A: healthz and metrics both on %s", opts.HealthzBindAddress)
	}
}
