package watch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// strictDecoder decodes any built-in kind as kubectl's default
// --validate=strict would accept it: unknown or duplicate fields are errors.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// manifestDoc is one document of a manifest file.
type manifestDoc struct {
	index   int              // 1-based, counting documents that are not blank
	objs    []runtime.Object // Services, EndpointSlices and Nodes (a List is flattened)
	ignored []string         // kinds uproxy does not use, e.g. "apps/v1, Kind=Deployment"
	err     error            // the document is malformed; objs is empty
}

// decodeManifest splits a YAML (multi-document, "---") or JSON (one or more
// concatenated objects) file into documents and decodes each independently,
// so a malformed document never hides the others. It never panics on any
// input; decoded objects always have a name and a namespace ("default" when
// unset).
func decodeManifest(data []byte) []manifestDoc {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // UTF-8 BOM
	var docs []manifestDoc
	for i, raw := range splitDocuments(data) {
		d := manifestDoc{index: i + 1}
		d.objs, d.ignored, d.err = decodeDocument(raw, true)
		if d.err != nil {
			d.objs = nil
		}
		docs = append(docs, d)
	}
	return docs
}

// splitDocuments returns the non-blank documents of a YAML stream, or the
// values of a JSON stream. A JSON syntax error ends the stream: the bad rest
// becomes one last document that fails to decode.
func splitDocuments(data []byte) [][]byte {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var out [][]byte
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		for {
			var raw json.RawMessage
			start := dec.InputOffset()
			err := dec.Decode(&raw)
			if errors.Is(err, io.EOF) {
				return out
			}
			if err != nil {
				return append(out, trimmed[start:])
			}
			out = append(out, raw)
		}
	}
	var out [][]byte
	var cur bytes.Buffer
	blank := true
	flush := func() {
		if !blank {
			out = append(out, bytes.Clone(cur.Bytes()))
		}
		cur.Reset()
		blank = true
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "---"); ok {
			if r := strings.TrimSpace(rest); r == "" || r[0] == '#' {
				flush()
				continue
			}
		}
		if t := strings.TrimSpace(line); t != "" && t[0] != '#' {
			blank = false
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	flush()
	return out
}

// decodeDocument decodes one document into the objects uproxy uses. A List
// is flattened (one level, as kubectl does).
func decodeDocument(raw []byte, allowList bool) (objs []runtime.Object, ignored []string, err error) {
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("not valid YAML or JSON: %w", err)
	}
	if t := bytes.TrimSpace(js); bytes.Equal(t, []byte("null")) || len(t) == 0 {
		return nil, nil, nil // comments only
	}
	obj, gvk, err := strictDecoder.Decode(js, nil, nil)
	if err != nil {
		if runtime.IsNotRegisteredError(err) && gvk != nil {
			return nil, []string{gvk.String()}, nil
		}
		return nil, nil, err
	}
	// resourceVersion is cleared: a file exported with kubectl get -o yaml
	// and then edited keeps its old version, and the tracker treats an
	// unchanged version as an informer resync.
	switch o := obj.(type) {
	case *v1.Service:
		o.ResourceVersion = ""
		err = defaultMeta(gvk.Kind, &o.ObjectMeta.Namespace, o.Name)
	case *discovery.EndpointSlice:
		o.ResourceVersion = ""
		err = defaultMeta(gvk.Kind, &o.ObjectMeta.Namespace, o.Name)
	case *v1.Node:
		o.ResourceVersion = ""
		if o.Name == "" {
			err = errors.New("Node: metadata.name is required")
		}
	case *v1.List:
		if !allowList {
			return nil, nil, errors.New("a List inside a List is not supported")
		}
		for i, item := range o.Items {
			if len(item.Raw) == 0 {
				return nil, nil, fmt.Errorf("items[%d]: empty", i)
			}
			sub, ign, err := decodeDocument(item.Raw, false)
			if err != nil {
				return nil, nil, fmt.Errorf("items[%d]: %w", i, err)
			}
			objs, ignored = append(objs, sub...), append(ignored, ign...)
		}
		return objs, ignored, nil
	default:
		return nil, []string{gvk.String()}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return []runtime.Object{obj}, nil, nil
}

func defaultMeta(kind string, ns *string, name string) error {
	if name == "" {
		return fmt.Errorf("%s: metadata.name is required", kind)
	}
	if *ns == "" {
		*ns = v1.NamespaceDefault
	}
	return nil
}
