package bed

import (
	"fmt"
	"os"
)

// writeConfigs writes containerd's config, the CNI network and kubelet's
// KubeletConfiguration into the node directory.
func (r *nodeRuntime) writeConfigs() error {
	files := map[string]string{
		"containerd.toml":              r.containerdConfig(),
		"cni/net.d/10-upnode.conflist": r.cniConfig(),
		"kubelet.yaml":                 r.kubeletConfig(),
	}
	for name, text := range files {
		if err := os.WriteFile(r.path(name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// containerdConfig: everything under the node directory; runc from Debian;
// cgroupfs (no systemd here); restrict_oom_score_adj because this machine's
// bounding set lacks CAP_SYS_RESOURCE (runc could not give the pause
// container its -998); pod network namespaces under the state directory, so
// they live in the node's mount namespace; NRI off; no registry is
// reachable, so images are imported (Bed.ImportImages) and the sandbox image
// pinned to the local pause build.
func (r *nodeRuntime) containerdConfig() string {
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
temp = %[3]q

[grpc]
  address = %[4]q

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %[5]q

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '/usr/sbin/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%[6]q]
      conf_dir = %[7]q
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'

  [plugins.'io.containerd.nri.v1.nri']
    disable = true
`, r.path("containerd/root"), r.path("containerd/state"), r.path("containerd/tmp"), r.Address,
		SandboxImage, r.b.opts.TestbinDir, r.path("cni/net.d"))
}

// cniConfig: the bridge plugin on the node's own bridge, host-local
// addresses from the pod subnet (its state under the node directory), portmap
// for hostPort. No masquerade: pods and clients reach each other directly.
func (r *nodeRuntime) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "upnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, CNIBridge, r.path("cni/ipam"), PodSubnet, PodGateway)
}

// kubeletConfig: what it took here (../shared/notes/kubelet-node.md): cgroup
// v1 allowed, cgroupfs under the node's own cgroup root, swap tolerated, no
// iptables chains of its own, oomScoreAdj 0 (no CAP_SYS_RESOURCE), small
// eviction thresholds and no image GC on a shared disk, every directory it
// writes under the node directory. The API server reaches it anonymously
// (node namespace only). Cluster DNS is the bed's CoreDNS Service.
func (r *nodeRuntime) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://%[2]s
cgroupDriver: cgroupfs
cgroupRoot: %[3]s
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
oomScoreAdj: 0
protectKernelDefaults: false
clusterDNS: [%[4]s]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: %[5]s
volumePluginDir: %[6]s
serializeImagePulls: false
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
`, NodeIP, r.Address, r.cgroupRoot, ClusterDNS, r.path("podlogs"), r.path("kubelet/volume-plugins"))
}
