package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/uproxy/uproxy/cmd/uproxy/version"
)

// nodeName is --hostname-override or the host name, lowercased and trimmed
// as kube-proxy does.
func nodeName(override string) (string, error) {
	name := override
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("node name: %w (set --hostname-override)", err)
		}
		name = h
	}
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" {
		return "", fmt.Errorf("node name is empty (set --hostname-override)")
	}
	return name, nil
}

// kubeClient builds the API client as kube-proxy does: --kubeconfig and
// --master, or the in-cluster config when both are empty.
//
// The in-cluster config reaches the API server through the kubernetes
// Service's ClusterIP, which only a service proxy makes reachable: a uproxy
// that replaces kube-proxy would wait for itself. Hence the warning, and
// the DaemonSet's --kubeconfig (kube-proxy's kubeconfig.conf: the API
// server's real address, the pod's service-account token).
func kubeClient(kubeconfig, master string, log zerolog.Logger) (kubernetes.Interface, error) {
	cfg, err := restConfig(kubeconfig, master, log)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// restConfig loads the client configuration for kubeClient.
func restConfig(kubeconfig, master string, log zerolog.Logger) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(master, kubeconfig)
	switch {
	case err != nil && kubeconfig != "":
		return nil, fmt.Errorf("kubernetes client config from --kubeconfig %s: %w", kubeconfig, err)
	case err != nil:
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	case kubeconfig == "" && master == "":
		log.Warn().Str("server", cfg.Host).Msg("no --kubeconfig or --master: using the in-cluster config, whose API server address is " +
			"the kubernetes Service's ClusterIP; unless another service proxy runs on this node uproxy cannot reach it (see the README)")
	}
	cfg.UserAgent = "uproxy/" + version.Get()
	// Protobuf for the built-in types, as kube-proxy; list/watch traffic is
	// most of what uproxy sends.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	return cfg, nil
}

// startingEvent records a "Starting" event on our Node, as kube-proxy does,
// best effort (RBAC: events create). It is the only write uproxy makes to
// the API.
func startingEvent(ctx context.Context, client kubernetes.Interface, node string, log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := metav1.NewTime(time.Now())
	ev := &v1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: node + ".uproxy.", Namespace: metav1.NamespaceDefault},
		InvolvedObject: v1.ObjectReference{
			Kind: "Node", Name: node, UID: "", APIVersion: "v1",
		},
		Reason:         "Starting",
		Message:        "Starting uproxy " + version.Get(),
		Source:         v1.EventSource{Component: "uproxy", Host: node},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
		Type:           v1.EventTypeNormal,
	}
	if _, err := client.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		log.Warn().Err(err).Msg("cannot record the Starting event on the node")
	}
}
