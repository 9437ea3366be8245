package watch

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

const svcYAML = `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
`

const sliceYAML = `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["127.0.0.1"]
`

func TestDecodeManifest(t *testing.T) {
	// want: per document, "" for success with the listed kinds, or an error substring.
	type doc struct {
		kinds []string // "Service/ns/name"
		err   string
	}
	cases := map[string]struct {
		in   string
		want []doc
	}{
		"service and slice": {
			in:   svcYAML + "---\n" + sliceYAML,
			want: []doc{{kinds: []string{"Service/default/web"}}, {kinds: []string{"EndpointSlice/default/web-1"}}},
		},
		"leading separator, comment-only documents and trailing separator": {
			in:   "---\n# just a comment\n---\n" + svcYAML + "--- # end\n\n",
			want: []doc{{kinds: []string{"Service/default/web"}}},
		},
		"other kinds ignored": {
			in:   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\n" + svcYAML,
			want: []doc{{}, {}, {kinds: []string{"Service/default/web"}}},
		},
		"List flattened": {
			in: `{"apiVersion":"v1","kind":"List","items":[` +
				`{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"x"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}},` +
				`{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}]}`,
			want: []doc{{kinds: []string{"Service/x/a", "Node//n1"}}},
		},
		"JSON stream": {
			in: `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1"}}
{"apiVersion":"v1","kind":"Service","metadata":{"name":"b"},"spec":{"clusterIP":"10.96.0.2"}}`,
			want: []doc{{kinds: []string{"Service/default/a"}}, {kinds: []string{"Service/default/b"}}},
		},
		"JSON syntax error keeps earlier objects": {
			in:   `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}} {"apiVersion": nope`,
			want: []doc{{kinds: []string{"Service/default/a"}}, {err: "not valid YAML or JSON"}},
		},
		"malformed document among good ones": {
			in:   svcYAML + "---\nkind: Service\n  bad: indentation: here\n---\n" + sliceYAML,
			want: []doc{{kinds: []string{"Service/default/web"}}, {err: "YAML"}, {kinds: []string{"EndpointSlice/default/web-1"}}},
		},
		"wrong field type": {
			in:   strings.Replace(svcYAML, "port: 80", "port: eighty", 1),
			want: []doc{{err: "port"}},
		},
		"unknown field is an error, as kubectl's strict validation": {
			in:   strings.Replace(svcYAML, "  ports:", "  prots:", 1),
			want: []doc{{err: "prots"}},
		},
		"missing kind": {
			in:   "apiVersion: v1\nmetadata: {name: x}\n",
			want: []doc{{err: "Kind"}},
		},
		"missing name": {
			in:   "apiVersion: v1\nkind: Service\nspec: {clusterIP: 10.96.0.1}\n",
			want: []doc{{err: "metadata.name"}},
		},
		"scalar document": {
			in:   "just a string\n",
			want: []doc{{err: "Kind"}},
		},
		"CRLF and BOM": {
			in:   "\xef\xbb\xbf" + strings.ReplaceAll(svcYAML+"---\n"+sliceYAML, "\n", "\r\n"),
			want: []doc{{kinds: []string{"Service/default/web"}}, {kinds: []string{"EndpointSlice/default/web-1"}}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			docs := decodeManifest([]byte(tc.in))
			if len(docs) != len(tc.want) {
				t.Fatalf("got %d documents, want %d: %+v", len(docs), len(tc.want), docs)
			}
			for i, d := range docs {
				w := tc.want[i]
				if d.index != i+1 {
					t.Errorf("doc %d: index %d", i, d.index)
				}
				if w.err != "" {
					if d.err == nil || !strings.Contains(d.err.Error(), w.err) {
						t.Errorf("doc %d: error %v, want one containing %q", i+1, d.err, w.err)
					}
					continue
				}
				if d.err != nil {
					t.Errorf("doc %d: unexpected error %v", i+1, d.err)
					continue
				}
				var got []string
				for _, o := range d.objs {
					k := keyOf(o)
					got = append(got, k.kind+"/"+k.namespace+"/"+k.name)
				}
				if strings.Join(got, ",") != strings.Join(w.kinds, ",") {
					t.Errorf("doc %d: objects %v, want %v", i+1, got, w.kinds)
				}
			}
		})
	}
}

// checkManifestObjects asserts decodeManifest's promises on any input.
func checkManifestObjects(t *testing.T, docs []manifestDoc) {
	t.Helper()
	for _, d := range docs {
		if d.err != nil && len(d.objs) > 0 {
			t.Fatalf("doc %d: objects returned with error %v", d.index, d.err)
		}
		for _, o := range d.objs {
			var name, ns string
			switch o := o.(type) {
			case *v1.Service:
				name, ns = o.Name, o.Namespace
			case *discovery.EndpointSlice:
				name, ns = o.Name, o.Namespace
			case *v1.Node:
				name, ns = o.Name, "-"
			default:
				t.Fatalf("doc %d: unexpected object %T", d.index, o)
			}
			if name == "" || ns == "" {
				t.Fatalf("doc %d: object without name/namespace: %#v", d.index, o)
			}
		}
	}
}
