"""A real node for the test bed: containerd + kubelet on this machine, with locally built images.

See docs in ../../shared? no: README's test-bed section and docs/cluster.md (what is real, what is
simulated). Only one real node can run per machine (fixed ports, cgroup root, bridge).
"""
