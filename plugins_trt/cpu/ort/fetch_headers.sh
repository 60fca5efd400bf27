#!/usr/bin/env bash
# Unpacks ONNX Runtime's C/C++ API headers into $1 (default build/ort-headers) from Debian's
# libonnxruntime-dev package (headers only; nothing is installed on the system, apt runs on private
# state under $1/apt). The onnxruntime Python wheel ships no headers. The C API is versioned and
# backward compatible: a library built against these headers (C API 21, ONNX Runtime 1.21) loads in any
# newer runtime. Prints one line and exits 0 when apt-get is missing or the package cannot be fetched:
# the CPU kernels still build, only librmeeto_ort_ops.so is skipped.
set -euo pipefail
DEST="${1:-build/ort-headers}"
SUITE="${RMEETO_ORT_HEADERS_SUITE:-trixie}"
PACKAGE="libonnxruntime-dev"
if [ -f "$DEST/usr/include/onnxruntime/onnxruntime_cxx_api.h" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "note: no apt-get/dpkg-deb: ONNX Runtime headers not fetched; set ONNXRUNTIME_INCLUDE_DIR to build librmeeto_ort_ops.so"
  exit 0
fi
# Everything happens in DEST.partial (absolute, as apt's options need), renamed to DEST only when whole:
# an interrupted fetch leaves no half-unpacked headers that the check above would take for complete.
mkdir -p "$(dirname "$DEST")"
WORK="$(cd "$(dirname "$DEST")" && pwd)/$(basename "$DEST").partial"
rm -rf "$WORK"
APT="$WORK/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/download"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" > "$APT/sources.list"
OPTIONS=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root -qq)
if ! apt-get "${OPTIONS[@]}" update || ! (cd "$APT/download" && apt-get "${OPTIONS[@]}" download "$PACKAGE"); then
  rm -rf "$WORK"
  echo "note: could not fetch $PACKAGE from Debian $SUITE: librmeeto_ort_ops.so will be skipped"
  exit 0
fi
DEB=$(ls "$APT/download/${PACKAGE}"_*.deb)
dpkg-deb -x "$DEB" "$WORK/tree"
VERSION=$(dpkg-deb -f "$DEB" Version)
rm -rf "$DEST"
mv "$WORK/tree" "$DEST"
rm -rf "$WORK"
echo "ONNX Runtime headers $VERSION in $DEST/usr/include/onnxruntime"
