package images

import (
	"context"
	"fmt"
)

// Import imports each image into the containerd at address (its gRPC
// socket), namespace k8s.io (the one the kubelet's CRI uses), with
// `ctr images import`, which names it after the archive's
// io.containerd.image.name annotation and unpacks it for the default
// platform into containerd's default snapshotter. ctr is the path of the
// ctr binary (integration/testbin/bin/ctr).
func Import(ctx context.Context, ctr, address string, imgs ...Image) error {
	for _, img := range imgs {
		if err := run(ctx, "", ctr, "--address", address, "--namespace", "k8s.io", "images", "import", img.Archive); err != nil {
			return fmt.Errorf("import %s: %w", img.Name, err)
		}
	}
	return nil
}
