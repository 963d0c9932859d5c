"""`sam local invoke` on a machine without an image registry: a loopback-only Docker engine, a stand-in for the
Lambda Python 3.12 base image, and a thin launcher around the real SAM CLI that puts Lambda containers on the
host network.

    python -m infra.sam_local.engine start|stop|status   # dockerd for this machine (bridge-less, host network)
    python -m infra.sam_local.base_image                 # build the stand-in base image if its inputs changed

Network rule: nothing may address anything outside 127.0.0.0/8. The daemon runs without any bridge (no docker0, no
veth, no iptables), every container runs on the host network, and no docker network is ever created.
"""
