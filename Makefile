# Test control plane (see docs/testbed.md).
.PHONY: testbed cluster

# Build the pinned kube-apiserver/controller-manager/scheduler/kubectl, etcd, kwok, KubeRay and helm
# from Go modules into INTERLACE_TESTBED_DIR (default ~/.cache/interlace/testbed); no-op once cached.
testbed:
	bash hack/testbed/build.sh

# Run the control plane in the foreground; prints the `export KUBECONFIG=...` line. Ctrl-C stops it.
cluster: testbed
	bash hack/testbed/up.sh $(ARGS)
