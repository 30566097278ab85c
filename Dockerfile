# Stage 2 of ./build.sh image: the static binary alone. build.sh runs this with a build context that holds
# just the binary copied out of stage 1.
#
# The image runs as root: the kubelet's device-plugins directory is writable by root only, and a FROM
# scratch image has no other user anyway. The DaemonSet drops every capability and makes the root
# filesystem read-only.
FROM scratch
LABEL org.opencontainers.image.title="k8s-accelerator-devplugin" \
      org.opencontainers.image.description="Kubernetes device plugin for Intel FPGA AFU ports and AWS FPGA units" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.2.0"
COPY k8s-accelerator-devplugin /k8s-accelerator-devplugin
ENTRYPOINT ["/k8s-accelerator-devplugin"]
