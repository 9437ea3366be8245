package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// readArchive returns the regular files of a tar by name.
func readArchive(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestWriteArchive reads an archive back the way an importer does: index ->
// manifest -> config and layers, checking names, digests, sizes and diffIDs.
func TestWriteArchive(t *testing.T) {
	bottom, err := filesLayer(file{path: "/etc/os-release", mode: 0o644, data: []byte("ID=test\n")})
	if err != nil {
		t.Fatal(err)
	}
	top, err := filesLayer(file{path: "/usr/local/bin/tool", mode: 0o755, data: []byte("#!/bin/sh\n")})
	if err != nil {
		t.Fatal(err)
	}
	// A layer from a file, as cached root filesystems are.
	p := filepath.Join(t.TempDir(), "bottom.tar.gz")
	if err := os.WriteFile(p, bottom.data, 0o644); err != nil {
		t.Fatal(err)
	}
	bottom = layer{path: p, digest: bottom.digest, diffID: bottom.diffID, size: bottom.size}

	dst := filepath.Join(t.TempDir(), "img.tar")
	const name = "docker.io/library/thing:v1"
	cfg := imageConfig{User: "1:1", Entrypoint: []string{"/usr/local/bin/tool"}}
	if err := writeArchive(dst, name, cfg, []layer{bottom, top}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := readArchive(t, f)
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %q", files["oci-layout"])
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+d.Digest[len("sha256:"):]]
		if !ok || sha(b) != d.Digest || int64(len(b)) != d.Size {
			t.Fatalf("blob %s (%d bytes): missing or wrong digest/size", d.Digest, d.Size)
		}
		return b
	}

	var index struct{ Manifests []descriptor }
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	md := index.Manifests[0]
	if md.Annotations[annotationImageName] != name || md.Annotations[annotationRefName] != "v1" {
		t.Errorf("index annotations %v", md.Annotations)
	}
	if md.Platform == nil || md.Platform.OS != "linux" {
		t.Errorf("index platform %+v", md.Platform)
	}
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(blob(md), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		Config imageConfig
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(blob(manifest.Config), &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "1:1" || len(config.Config.Entrypoint) != 1 {
		t.Errorf("config %+v", config.Config)
	}
	if len(manifest.Layers) != 2 || len(config.RootFS.DiffIDs) != 2 {
		t.Fatalf("%d layers, %d diffIDs", len(manifest.Layers), len(config.RootFS.DiffIDs))
	}
	want := []string{"etc/os-release", "usr/local/bin/tool"}
	for i, ld := range manifest.Layers {
		zr, err := gzip.NewReader(bytes.NewReader(blob(ld)))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if sha(raw) != config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: diffID %s, uncompressed digest %s", i, config.RootFS.DiffIDs[i], sha(raw))
		}
		if _, ok := readArchive(t, bytes.NewReader(raw))[want[i]]; !ok {
			t.Errorf("layer %d lacks %s", i, want[i])
		}
	}
}

// TestFilesLayerIsReproducible: the same files give the same digest.
func TestFilesLayerIsReproducible(t *testing.T) {
	a, err := filesLayer(file{path: "/a/b", mode: 0o755, data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := filesLayer(file{path: "/a/b", mode: 0o755, data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if a.digest != b.digest || a.diffID != b.diffID {
		t.Fatalf("digests differ: %s %s", a.digest, b.digest)
	}
}
