package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/uproxy/uproxy/integration/bed"
)

// world is one scenario on the shared kubelet node: a Kubernetes namespace
// of its own (emptied in t.Cleanup), kubectl, and a deadline.
type world struct {
	t   *testing.T
	b   *bed.Bed
	ctx context.Context
	ns  string
}

func newWorld(t *testing.T, namespace string, timeout time.Duration) *world {
	t.Helper()
	b := bed.SharedNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	w := &world{t: t, b: b, ctx: ctx}
	if namespace != "" {
		w.ns = b.Namespace(t, namespace)
	}
	return w
}

// say prints a timestamped line (the scenarios' visible output).
func say(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// kubectl runs kubectl and fails the test on error.
func (w *world) kubectl(args ...string) string {
	w.t.Helper()
	out, err := w.b.Kubectl(w.ctx, "", args...)
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

// apply applies a manifest with kubectl.
func (w *world) apply(manifest string) {
	w.t.Helper()
	if out, err := w.b.Kubectl(w.ctx, manifest, "apply", "-f", "-"); err != nil {
		w.t.Fatalf("%v\n%s", err, out)
	}
}

// seedApp is the seed's proddetail: the echoserver answering "Hello! I am
// Pod: <name> <ip>" on port 3000 (any path, /catalogdetail included), a
// readiness probe, and the termination kubelet does (SIGTERM, grace, SIGKILL).
// extraArgs are added to the echoserver's.
func seedApp(ns, name, image string, replicas int, extraArgs ...string) string {
	args := []string{`"--http=:3000"`, `"--drain-timeout=20s"`}
	for _, a := range extraArgs {
		args = append(args, fmt.Sprintf("%q", a))
	}
	return strings.NewReplacer("NS", ns, "NAME", name, "IMAGE", image, "REPLICAS", fmt.Sprint(replicas),
		"ARGS", strings.Join(args, ", ")).Replace(`
apiVersion: apps/v1
kind: Deployment
metadata:
  name: NAME
  namespace: NS
  labels: {app: NAME}
spec:
  replicas: REPLICAS
  selector:
    matchLabels: {app: NAME}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: NAME}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: NAME
        image: IMAGE
        imagePullPolicy: IfNotPresent
        args: [ARGS]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        ports:
        - {name: http, containerPort: 3000}
        readinessProbe:
          httpGet: {path: /catalogdetail, port: 3000}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata:
  name: NAME
  namespace: NS
  labels: {app: NAME}
spec:
  selector: {app: NAME}
  ports:
  - {name: http, port: 3000, targetPort: 3000}
`)
}

// clientPod runs the client image (sh, curl, dig) in the world's namespace
// and returns a client that runs tools inside it.
func (w *world) clientPod(name string) *bed.PodClient {
	w.t.Helper()
	w.apply(strings.NewReplacer("NS", w.ns, "NAME", name, "IMAGE", bed.ClientImage).Replace(`
apiVersion: v1
kind: Pod
metadata:
  name: NAME
  namespace: NS
  labels: {app: NAME}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: NAME
    image: IMAGE
    imagePullPolicy: IfNotPresent
`))
	if _, err := w.b.WaitPodsReady(w.ctx, w.ns, "app="+name, 1); err != nil {
		w.t.Fatal(err)
	}
	c, err := w.b.NewPodClient(w.ctx, w.ns, name)
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

// seed deploys the seed's proddetail (seedApp) with replicas pods and a
// client pod, and waits until the client reaches the service by name.
func (w *world) seed(client string, replicas int, extraArgs ...string) *bed.PodClient {
	w.t.Helper()
	w.apply(seedApp(w.ns, "proddetail", bed.EchoImage, replicas, extraArgs...))
	w.waitRollout(w.ns, "deployment/proddetail", 2*time.Minute)
	c := w.clientPod(client)
	if _, err := c.WaitHello(w.ctx, seedURL); err != nil {
		w.t.Fatal(err)
	}
	return c
}

// waitRollout runs kubectl rollout status (deployment/x or ds/x).
func (w *world) waitRollout(ns, what string, timeout time.Duration) {
	w.t.Helper()
	out, err := w.b.Kubectl(w.ctx, "", "-n", ns, "rollout", "status", what, "--timeout", timeout.String())
	if err != nil {
		state, _ := w.b.Kubectl(w.ctx, "", "-n", ns, "get", "all,events", "-o", "wide")
		w.t.Fatalf("%v\n%s\n%s", err, out, state)
	}
}

// readyPods lists the names of the Ready pods labelled app=<app>.
func (w *world) readyPods(app string) []string {
	w.t.Helper()
	l, err := w.b.Client.CoreV1().Pods(w.ns).List(w.ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		w.t.Fatal(err)
	}
	var names []string
	for _, p := range l.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" && p.DeletionTimestamp == nil {
				names = append(names, p.Name)
			}
		}
	}
	sort.Strings(names)
	return names
}

func (w *world) sleep(d time.Duration) {
	select {
	case <-w.ctx.Done():
		w.t.Fatalf("deadline while waiting %v", d)
	case <-time.After(d):
	}
}

// slowDetail lists the samples slower than bed.SlowThreshold.
func slowDetail(s bed.Summary) string {
	var sb strings.Builder
	for _, x := range s.Samples {
		if x.Dur > bed.SlowThreshold {
			fmt.Fprintf(&sb, "  %s %v ok=%v %s\n", x.Start.Format("15:04:05.000"), x.Dur.Round(time.Millisecond), x.OK, x.Detail)
		}
	}
	return sb.String()
}

// summary prints the line a scenario asserts on.
func summary(name, format string, args ...any) {
	fmt.Printf("SUMMARY %s: %s\n", name, fmt.Sprintf(format, args...))
}

// repoFile reads a file of the checkout.
func repoFile(t *testing.T, rel string) string {
	t.Helper()
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// deployManifests is `kubectl apply -f deploy/` input: every YAML file of
// deploy/, in name order, as the README's guide applies them. besideKubeProxy
// uncomments the DaemonSet's lines marked for option A (beside kube-proxy),
// as the README tells a user to.
func deployManifests(t *testing.T, besideKubeProxy bool) string {
	t.Helper()
	root, err := bed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "deploy", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("deploy/*.yaml: %v", err)
	}
	var docs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if besideKubeProxy && filepath.Base(f) == "daemonset.yaml" {
			text = uncommentOptionA(t, text)
		}
		docs = append(docs, text)
	}
	return strings.Join(docs, "\n---\n")
}

// optionALine is a commented DaemonSet argument of option A.
var optionALine = regexp.MustCompile(`(?m)^(\s*)# (- --\S+.*)$`)

// uncommentOptionA uncomments the argument lines that follow the DaemonSet's
// "Option A" marker comment, up to the first line that is not one.
func uncommentOptionA(t *testing.T, text string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	found := 0
	for i := 0; i < len(lines); i++ {
		if !strings.Contains(lines[i], "Option A") {
			continue
		}
		for j := i + 1; j < len(lines); j++ {
			m := optionALine.FindStringSubmatch(lines[j])
			if m == nil {
				break
			}
			lines[j] = m[1] + m[2]
			found++
		}
		break
	}
	if found == 0 {
		t.Fatalf("deploy/daemonset.yaml has no commented option A arguments after an \"Option A\" comment")
	}
	return strings.Join(lines, "\n")
}
