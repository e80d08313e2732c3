# Test control plane (see docs/testbed.md).
.PHONY: testbed cluster images cluster-real-node

# Build the pinned kube-apiserver/controller-manager/scheduler/kubectl, etcd, kwok, KubeRay and helm
# from Go modules into INTERLACE_TESTBED_DIR (default ~/.cache/interlace/testbed); no-op once cached.
testbed:
	bash hack/testbed/build.sh

# Run the control plane in the foreground; prints the `export KUBECONFIG=...` line. Ctrl-C stops it.
cluster: testbed
	bash hack/testbed/up.sh $(ARGS)

# Build the container images (pause, coredns, operator, runtime) from a Debian root filesystem and PyPI
# wheels, cached by content in $INTERLACE_CACHE/images; `make images LOAD=/path/containerd.sock` also
# imports them into a containerd. Needs root (mmdebstrap) and the venv of hack/in-venv.sh.
images: testbed
	bash hack/in-venv.sh python hack/images/build.py $(if $(LOAD),--load $(LOAD))

# The control plane with a real node (kubelet, containerd, CNI, kube-proxy, CoreDNS) running the images.
cluster-real-node: testbed images
	bash hack/testbed/up.sh --real-node $(ARGS)
