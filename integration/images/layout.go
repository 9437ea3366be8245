package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// OCI media types and index annotations the archives use.
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"

	// annotationImageName is the full reference `ctr images import` names
	// the image by (containerd's images.AnnotationImageName).
	annotationImageName = "io.containerd.image.name"
	// annotationRefName is the OCI ref name (the tag), for other readers.
	annotationRefName = "org.opencontainers.image.ref.name"
)

// epoch is the modification time of every file and blob the builder writes,
// so that the same inputs give the same digests.
var epoch = time.Unix(0, 0).UTC()

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// imageConfig is the part of an OCI image configuration the builder sets.
type imageConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
}

// configFile is an OCI image configuration blob.
type configFile struct {
	Created      time.Time    `json:"created"`
	Architecture string       `json:"architecture"`
	OS           string       `json:"os"`
	Config       imageConfig  `json:"config"`
	RootFS       configRootFS `json:"rootfs"`
}

type configRootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// layer is a gzip-compressed layer blob: its file (or bytes) and digests.
type layer struct {
	// path is the blob on disk; data is used when path is empty.
	path string
	data []byte
	// digest is of the compressed blob, diffID of the uncompressed tar.
	digest, diffID string
	size           int64
}

func (l layer) open() (io.ReadCloser, error) {
	if l.path == "" {
		return io.NopCloser(bytes.NewReader(l.data)), nil
	}
	return os.Open(l.path)
}

// file is one regular file of a layer built in memory.
type file struct {
	// path is absolute inside the image, e.g. /usr/local/bin/uproxy.
	path string
	mode int64
	data []byte
}

// filesLayer builds a layer holding files (root-owned) and their parent
// directories (0755). Timestamps are epoch, so equal files give equal digests.
func filesLayer(files ...file) (layer, error) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	dirs := map[string]bool{}
	for _, f := range files {
		rel := strings.TrimPrefix(path.Clean(f.path), "/")
		var parents []string
		for d := path.Dir(rel); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[i] + "/", Mode: 0o755,
				ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return layer{}, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: f.mode,
			Size: int64(len(f.data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return layer{}, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return layer{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	var gzBuf bytes.Buffer
	diffID, err := compress(&gzBuf, &tarBuf)
	if err != nil {
		return layer{}, err
	}
	return layer{data: gzBuf.Bytes(), digest: digestOf(gzBuf.Bytes()), diffID: diffID, size: int64(gzBuf.Len())}, nil
}

// compress gzips r into w and returns the digest of what it read (the
// layer's diffID).
func compress(w io.Writer, r io.Reader) (string, error) {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(zw, io.TeeReader(r, h)); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeArchive writes an OCI image layout tar at dst holding one image:
// layers (bottom first) and cfg, named name in index.json. The file appears
// atomically (written next to dst, then renamed).
func writeArchive(dst, name string, cfg imageConfig, layers []layer) error {
	plat := platform{Architecture: runtime.GOARCH, OS: "linux"}
	diffIDs := make([]string, len(layers))
	layerDescs := make([]descriptor, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.diffID
		layerDescs[i] = descriptor{MediaType: mediaTypeLayerGz, Digest: l.digest, Size: l.size}
	}
	configJSON, err := json.Marshal(configFile{Created: epoch, Architecture: plat.Architecture, OS: plat.OS,
		Config: cfg, RootFS: configRootFS{Type: "layers", DiffIDs: diffIDs}})
	if err != nil {
		return err
	}
	configDesc := descriptor{MediaType: mediaTypeConfig, Digest: digestOf(configJSON), Size: int64(len(configJSON))}
	manifestJSON, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{2, mediaTypeManifest, configDesc, layerDescs})
	if err != nil {
		return err
	}
	tag := name[strings.LastIndex(name, ":")+1:]
	indexJSON, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{2, mediaTypeIndex, []descriptor{{
		MediaType: mediaTypeManifest, Digest: digestOf(manifestJSON), Size: int64(len(manifestJSON)),
		Platform:    &plat,
		Annotations: map[string]string{annotationImageName: name, annotationRefName: tag},
	}}})
	if err != nil {
		return err
	}

	tmp, err := os.CreateTemp(filepath.Dir(dst), filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	err = writeLayout(tmp, layers, [][]byte{configJSON, manifestJSON}, indexJSON)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return os.Rename(tmp.Name(), dst)
}

// writeLayout writes the tar of an OCI image layout: the layer blobs, the
// other blobs (config, manifest), oci-layout and index.json.
func writeLayout(w io.Writer, layers []layer, blobs [][]byte, indexJSON []byte) error {
	tw := tar.NewWriter(w)
	add := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size,
			ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	blobPath := func(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755,
			ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, l := range layers {
		r, err := l.open()
		if err != nil {
			return err
		}
		err = add(blobPath(l.digest), l.size, r)
		r.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.digest, err)
		}
	}
	for _, b := range blobs {
		if err := add(blobPath(digestOf(b)), int64(len(b)), bytes.NewReader(b)); err != nil {
			return err
		}
	}
	layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
	if err := add("oci-layout", int64(len(layout)), bytes.NewReader(layout)); err != nil {
		return err
	}
	if err := add("index.json", int64(len(indexJSON)), bytes.NewReader(indexJSON)); err != nil {
		return err
	}
	return tw.Close()
}
