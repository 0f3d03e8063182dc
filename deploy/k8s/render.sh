#!/bin/sh
# Write the manifests with the image digest filled in.
#
#   deploy/k8s/render.sh DIGEST [IMAGE] [OUTDIR]
#
# DIGEST is sha256:<64 hex>, or a file holding it on its first line (the
# dist/natkit-VERSION.oci.digest that `make image` writes). IMAGE is the
# repository the image was pushed to (default: natkit), OUTDIR where the
# rendered files go (default: dist/k8s). Then:
#   kubectl apply -f dist/k8s/
set -eu

here=$(dirname "$0")
digest=${1:-}
image=${2:-natkit}
out=${3:-dist/k8s}

if [ -f "$digest" ]; then
    digest=$(head -n 1 "$digest" | tr -d '[:space:]')
fi

if ! printf '%s\n' "$digest" | grep -Eq '^sha256:[0-9a-f]{64}$'; then
    echo "render.sh: error: expected an image digest sha256:<64 hex digits>," \
        "got '${digest}'" >&2
    exit 2
fi
case "$image" in
    *[!A-Za-z0-9./:_-]* | "")
        echo "render.sh: error: '${image}' is not an image repository name" >&2
        exit 2
        ;;
esac

mkdir -p "$out"
for manifest in "$here"/*.yaml; do
    sed -e "s|natkit@sha256:IMAGE-DIGEST-PLACEHOLDER|${image}@${digest}|g" \
        -e "s|sha256:IMAGE-DIGEST-PLACEHOLDER|${digest}|g" \
        "$manifest" > "$out/$(basename "$manifest")"
done
if grep -l 'IMAGE-DIGEST-PLACEHOLDER' "$out"/*.yaml > /dev/null 2>&1; then
    echo "render.sh: error: a placeholder is left in $out" >&2
    exit 1
fi
echo "wrote $out/: image ${image}@${digest}"
