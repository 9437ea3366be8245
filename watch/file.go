package watch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// maxManifestSize bounds what one manifest file may make uproxy read.
const maxManifestSize = 32 << 20

// FileSource reads Services and EndpointSlices (and this node's Node, if
// present) from a manifest file or a directory of *.yaml, *.yml and *.json
// files (not recursive; names starting with "." are skipped), and re-reads
// them when they change. It watches the directory (not the file), so
// editors that write a new file and rename it over the old one, and
// ConfigMap volume updates (..data symlink swap), are seen; a slow poll is a
// safety net. A malformed document is reported with its file and document
// number and skipped; the objects it held at the last good read stay in
// force, and the rest of the files apply.
type FileSource struct {
	path     string
	log      zerolog.Logger
	debounce time.Duration // quiet time after a file event before re-reading
	poll     time.Duration // re-read this often even without events

	// The fields below are owned by the Run goroutine.
	dir     bool
	files   map[string]*fileState
	applied map[objKey]runtime.Object
}

// fileState is the last read of one file.
type fileState struct {
	sum  [sha256.Size]byte
	docs map[int][]runtime.Object // last good objects per document number
	objs []runtime.Object         // what the file contributes now
}

type objKey struct{ kind, namespace, name string }

// NewFileSource returns a source for the manifest file or directory path.
func NewFileSource(path string, log zerolog.Logger) *FileSource {
	return &FileSource{
		path:     path,
		log:      log.With().Str("component", "watch.file").Str("path", path).Logger(),
		debounce: 100 * time.Millisecond,
		poll:     10 * time.Second,
		files:    make(map[string]*fileState),
		applied:  make(map[objKey]runtime.Object),
	}
}

// Run reads the manifests, marks t synced, and re-reads on change until ctx
// is done. It fails only when path cannot be read at start.
func (s *FileSource) Run(ctx context.Context, t *Tracker) error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("manifests: %w", err)
	}
	s.dir = fi.IsDir()
	watchDir := s.path
	if !s.dir {
		watchDir = filepath.Dir(s.path)
	}
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(watchDir); err != nil {
			_ = w.Close()
		}
	}
	if err != nil {
		s.log.Warn().Err(err).Dur("poll", s.poll).Msg("cannot watch manifests, polling instead")
	} else {
		defer w.Close()
		events, watchErrs = w.Events, w.Errors
	}

	s.reload(t)
	t.SetSynced()

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	poll := time.NewTicker(s.poll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if s.relevant(ev) {
				debounce.Reset(s.debounce)
			}
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			s.log.Warn().Err(err).Msg("manifest watch error; changes may be seen only at the next poll")
		case <-debounce.C:
			s.reload(t)
		case <-poll.C:
			s.reload(t)
		}
	}
}

// relevant reports whether a file event may change what is read.
func (s *FileSource) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	name := filepath.Base(ev.Name)
	if strings.HasPrefix(name, "..") { // ConfigMap volume: ..data swapped
		return true
	}
	if s.dir {
		return isManifestName(name)
	}
	return name == filepath.Base(s.path)
}

func isManifestName(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// list returns the files to read, sorted.
func (s *FileSource) list() ([]string, error) {
	if !s.dir {
		return []string{s.path}, nil
	}
	entries, err := os.ReadDir(s.path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !isManifestName(e.Name()) {
			continue
		}
		p := filepath.Join(s.path, e.Name())
		if fi, err := os.Stat(p); err != nil || fi.IsDir() { // follows symlinks
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// reload re-reads every file and records the differences in t.
func (s *FileSource) reload(t *Tracker) {
	paths, err := s.list()
	if err != nil {
		s.log.Error().Err(err).Msg("cannot list manifests, keeping the last state")
		return
	}
	changed := len(paths) != len(s.files)
	files := make(map[string]*fileState, len(paths))
	for _, p := range paths {
		prev := s.files[p]
		data, err := readLimited(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && s.dir:
			changed = true // deleted between listing and reading: its objects go
			continue
		case err != nil:
			s.log.Error().Err(err).Str("file", p).Msg("cannot read manifest, keeping its last state")
			if prev != nil {
				files[p] = prev
			}
			continue
		}
		if prev != nil && prev.sum == sha256.Sum256(data) {
			files[p] = prev
			continue
		}
		changed = true
		files[p] = s.parse(p, data, prev)
	}
	s.files = files
	if changed {
		s.apply(t, paths)
	}
}

func readLimited(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("larger than %d bytes", maxManifestSize)
	}
	return data, nil
}

// parse decodes one file; a malformed document keeps the objects it had in
// prev.
func (s *FileSource) parse(p string, data []byte, prev *fileState) *fileState {
	st := &fileState{sum: sha256.Sum256(data), docs: make(map[int][]runtime.Object)}
	docs := decodeManifest(data)
	for _, d := range docs {
		for _, k := range d.ignored {
			s.log.Debug().Str("file", p).Int("document", d.index).Str("kind", k).Msg("kind not used by uproxy, ignored")
		}
		if d.err == nil {
			st.docs[d.index] = d.objs
			continue
		}
		ev := s.log.Error().Str("file", p).Int("document", d.index).Err(d.err)
		if old, ok := prev.lastGood(d.index); ok {
			st.docs[d.index] = old
			ev.Msg("malformed manifest document skipped, its last good objects stay")
		} else {
			ev.Msg("malformed manifest document skipped")
		}
	}
	for _, i := range slices.Sorted(maps.Keys(st.docs)) {
		st.objs = append(st.objs, st.docs[i]...)
	}
	s.log.Info().Str("file", p).Int("documents", len(docs)).Int("objects", len(st.objs)).Msg("manifest read")
	return st
}

func (f *fileState) lastGood(i int) ([]runtime.Object, bool) {
	if f == nil {
		return nil, false
	}
	o, ok := f.docs[i]
	return o, ok
}

// apply merges the files (in path order; a later duplicate wins) and records
// what differs from the last applied state.
func (s *FileSource) apply(t *Tracker, paths []string) {
	want := make(map[objKey]runtime.Object)
	for _, p := range paths {
		st := s.files[p]
		if st == nil {
			continue
		}
		for _, o := range st.objs {
			k := keyOf(o)
			if _, dup := want[k]; dup {
				s.log.Warn().Str("file", p).Str("kind", k.kind).Str("object", k.namespace+"/"+k.name).Msg("object defined twice, the later definition wins")
			}
			want[k] = o
		}
	}
	for k, o := range want {
		old, ok := s.applied[k]
		switch {
		case !ok:
			record(t, nil, o)
		case old != o:
			record(t, old, o)
		}
	}
	for k, old := range s.applied {
		if _, ok := want[k]; !ok {
			record(t, old, nil)
		}
	}
	s.applied = want
}

func keyOf(o runtime.Object) objKey {
	switch o := o.(type) {
	case *v1.Service:
		return objKey{"Service", o.Namespace, o.Name}
	case *discovery.EndpointSlice:
		return objKey{"EndpointSlice", o.Namespace, o.Name}
	case *v1.Node:
		return objKey{"Node", "", o.Name}
	}
	return objKey{}
}

// record hands one (previous, current) pair to the tracker's handlers.
func record(t *Tracker, prev, cur runtime.Object) {
	obj := cur
	if obj == nil {
		obj = prev
	}
	switch obj.(type) {
	case *v1.Service:
		p, _ := prev.(*v1.Service)
		c, _ := cur.(*v1.Service)
		t.updateService(p, c)
	case *discovery.EndpointSlice:
		p, _ := prev.(*discovery.EndpointSlice)
		c, _ := cur.(*discovery.EndpointSlice)
		t.updateSlice(p, c)
	case *v1.Node:
		if n, _ := cur.(*v1.Node); n != nil {
			t.OnNodeUpdate(nil, n)
		} else {
			t.OnNodeDelete(prev.(*v1.Node))
		}
	}
}
