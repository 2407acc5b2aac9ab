"""A real node for the test bed: containerd + kubelet on this machine, with locally built images.

images.py builds the images, node.py runs the node, hoststate.py records and restores what it
changes on the host, apiproxy.py lets pods reach the loopback-only API server. README's test-bed
section and docs/cluster.md say what is real and what is simulated. One real node per machine.
"""
