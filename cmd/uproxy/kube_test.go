package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// kubeadmKubeconfig is the shape of kubeadm's (and minikube's) ConfigMap
// kube-system/kube-proxy key kubeconfig.conf, which the DaemonSet mounts:
// the API server's real address and the pod's own service-account token
// and CA (here in temporary files: client-go reads them when loading).
const kubeadmKubeconfig = `apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: %[2]s
    server: https://10.244.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: %[1]s
`

func TestRestConfig(t *testing.T) {
	dir := t.TempDir()
	token, ca := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	for _, f := range []string{token, ca} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := filepath.Join(dir, "kubeconfig.conf")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(kubeadmKubeconfig, token, ca)), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "none", "kubeconfig.conf")
	tests := map[string]struct {
		kubeconfig, master string
		host               string // want
		wantErr            string
	}{
		"kubeadm kubeconfig":        {kubeconfig: kubeconfig, host: "https://10.244.0.1:6443"},
		"master overrides":          {kubeconfig: kubeconfig, master: "https://192.0.2.1:6443", host: "https://192.0.2.1:6443"},
		"kubeconfig missing":        {kubeconfig: missing, wantErr: "kubernetes client config from --kubeconfig " + missing + ": "},
		"in-cluster outside a pod":  {wantErr: "kubernetes client config: "},
		"master without kubeconfig": {master: "https://192.0.2.1:6443", host: "https://192.0.2.1:6443"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("KUBERNETES_SERVICE_HOST", "") // as outside a pod, wherever the test runs
			cfg, err := restConfig(tc.kubeconfig, tc.master, zerolog.New(zerolog.NewTestWriter(t)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != tc.host {
				t.Errorf("host %q, want %q", cfg.Host, tc.host)
			}
			if tc.kubeconfig != "" && (cfg.BearerTokenFile != token || cfg.CAFile != ca) {
				t.Errorf("token file %q, CA %q: want the pod's own %q, %q", cfg.BearerTokenFile, cfg.CAFile, token, ca)
			}
			if !strings.HasPrefix(cfg.UserAgent, "uproxy/") {
				t.Errorf("user agent %q", cfg.UserAgent)
			}
		})
	}
}
