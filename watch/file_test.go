package watch

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/uproxy/uproxy/svc"
)

// syncBuffer is a goroutine-safe log sink for assertions on log lines.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// writeReplace writes like an editor that saves to a temporary file and
// renames it over the original.
func writeReplace(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fileWorld runs a FileSource on path with the poll disabled, so changes
// can only be seen through file events.
func fileWorld(t *testing.T, path string, logs *syncBuffer) *world {
	t.Helper()
	log := testLogger(t)
	if logs != nil {
		log = zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), logs))
	}
	src := NewFileSource(path, log)
	src.poll = time.Hour
	src.debounce = 20 * time.Millisecond
	w := runWorld(t, Options{}, src)
	w.synced(t)
	return w
}

func webEPs(s *recordSink) []svc.Endpoint { return s.eps[pn("default", "web", "http")] }

func TestFileSourceGoodFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "svc.yaml"), svcYAML)
	writeFile(t, filepath.Join(dir, "slice.json"), `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
		"metadata":{"name":"web-1","labels":{"kubernetes.io/service-name":"web"}},
		"addressType":"IPv4","ports":[{"name":"http","port":8080}],
		"endpoints":[{"addresses":["127.0.0.1"]},{"addresses":["127.0.0.2"],"conditions":{"ready":false}}]}`)
	writeFile(t, filepath.Join(dir, "README.md"), "not a manifest")
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), strings.Replace(svcYAML, "name: web", "name: hidden", 1))
	w := fileWorld(t, dir, nil)
	ports, eps, _, _ := w.sink.snapshot()
	if len(ports) != 1 || ports[0].Name != pn("default", "web", "http") || ports[0].Port != 80 {
		t.Fatalf("ports %+v", ports)
	}
	want := []svc.Endpoint{readyEP("127.0.0.1:8080")}
	if got := eps[pn("default", "web", "http")]; !slices.Equal(got, want) {
		t.Fatalf("endpoints %v, want %v", got, want)
	}
}

func TestFileSourceBrokenDocument(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "all.yaml")
	writeFile(t, file, svcYAML+"---\napiVersion: v1\nkind: Service\nmetadata: {name: broken\nspec: {}\n---\n"+sliceYAML)
	var logs syncBuffer
	w := fileWorld(t, dir, &logs)
	ports, eps, _, _ := w.sink.snapshot()
	if len(ports) != 1 || len(eps[pn("default", "web", "http")]) != 1 {
		t.Fatalf("the good documents did not apply: ports %+v endpoints %v", ports, eps)
	}
	out := logs.String()
	if !strings.Contains(out, `"file":"`+file+`"`) || !strings.Contains(out, `"document":2`) {
		t.Fatalf("error does not name the file and document 2:\n%s", out)
	}
}

func TestFileSourceEditedWhileRunning(t *testing.T) {
	dir := t.TempDir()
	web := filepath.Join(dir, "web.yaml")
	writeFile(t, web, svcYAML+"---\n"+sliceYAML)
	w := fileWorld(t, dir, nil)
	if _, eps, _, _ := w.sink.snapshot(); len(eps) != 1 {
		t.Fatalf("initial endpoints %v", eps)
	}

	twoEPs := strings.Replace(sliceYAML, `["127.0.0.1"]`, "[\"127.0.0.1\"]\n- addresses: [\"127.0.0.2\"]", 1)
	writeReplace(t, web, svcYAML+"---\n"+twoEPs)
	w.sink.waitFor(t, "second endpoint after rename-replace", func(s *recordSink) bool { return len(webEPs(s)) == 2 })

	// In-place rewrite: the service port changes, the slice document breaks.
	// The port change applies; the slice keeps its last good endpoints.
	writeFile(t, web, strings.Replace(svcYAML, "port: 80", "port: 81", 1)+"---\n"+strings.Replace(twoEPs, "addressType: IPv4", "addressType: [", 1))
	w.sink.waitFor(t, "port 81", func(s *recordSink) bool { return len(s.ports) == 1 && s.ports[0].Port == 81 })
	if _, eps, _, _ := w.sink.snapshot(); len(eps[pn("default", "web", "http")]) != 2 {
		t.Fatalf("last good endpoints lost: %v", eps)
	}

	// Exported objects carry a resourceVersion; editing the spec without
	// touching it must still apply.
	withRV := strings.Replace(svcYAML, "name: web", "name: web\n  resourceVersion: \"42\"", 1)
	writeFile(t, web, withRV+"---\n"+twoEPs)
	w.sink.waitFor(t, "port 80 again", func(s *recordSink) bool { return len(s.ports) == 1 && s.ports[0].Port == 80 })
	writeFile(t, web, strings.Replace(withRV, "port: 80", "port: 83", 1)+"---\n"+twoEPs)
	w.sink.waitFor(t, "port 83 with an unchanged resourceVersion", func(s *recordSink) bool { return len(s.ports) == 1 && s.ports[0].Port == 83 })

	other := filepath.Join(dir, "other.yml")
	writeFile(t, other, strings.Replace(strings.Replace(svcYAML, "name: web", "name: other", 1), "10.96.0.10", "10.96.0.11", 1))
	w.sink.waitFor(t, "new file's service", func(s *recordSink) bool { return len(s.ports) == 2 })
	if err := os.Remove(other); err != nil {
		t.Fatal(err)
	}
	w.sink.waitFor(t, "removed file's service gone", func(s *recordSink) bool { return len(s.ports) == 1 })
}

func TestFileSourceSingleFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "uproxy.yaml")
	writeFile(t, file, svcYAML+"---\n"+sliceYAML)
	writeFile(t, filepath.Join(dir, "unrelated.yaml"), strings.Replace(svcYAML, "name: web", "name: unrelated", 1))
	var logs syncBuffer
	w := fileWorld(t, file, &logs)
	if ports, _, _, _ := w.sink.snapshot(); len(ports) != 1 {
		t.Fatalf("ports %+v (only the named file counts)", ports)
	}
	// Removed (an editor's backup-rename), then written again: the service
	// never disappears in between.
	if err := os.Rename(file, file+"~"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitDeadline)
	for !strings.Contains(logs.String(), "keeping its last state") {
		if time.Now().After(deadline) {
			t.Fatal("the missing file was never noticed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	writeReplace(t, file, strings.Replace(svcYAML, "port: 80", "port: 82", 1)+"---\n"+sliceYAML)
	w.sink.waitFor(t, "port 82", func(s *recordSink) bool { return len(s.ports) == 1 && s.ports[0].Port == 82 })
	w.sink.mu.Lock()
	defer w.sink.mu.Unlock()
	if slices.Contains(w.sink.portCount, 0) {
		t.Fatalf("the service was dropped while the file was being replaced: port counts %v", w.sink.portCount)
	}
}

func TestFileSourceMissingPath(t *testing.T) {
	src := NewFileSource(filepath.Join(t.TempDir(), "nope"), testLogger(t))
	err := src.Run(context.Background(), NewTracker(Options{}, testLogger(t)))
	if err == nil || !os.IsNotExist(errors.Unwrap(err)) {
		t.Fatalf("Run on a missing path: %v", err)
	}
}
