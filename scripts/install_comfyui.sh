#!/usr/bin/env bash
# Lay out upstream ComfyUI for textloc's integration tests and demo, and install its
# Python requirements the way that works on CPU here (see DEVELOPERS.md).
#
# Usage: scripts/install_comfyui.sh [DEST]      DEST: $COMFYUI_DIR, else $HOME/ComfyUI
#
# Source, first found:
#   1. DEST already holds ComfyUI (main.py)       -> only the requirements are checked
#   2. a bare git snapshot of Comfy-Org/ComfyUI   ($COMFYUI_GIT_DIR, else
#      /work/.mirror/Comfy-Org+ComfyUI/repo), laid out with materialize-repo
#      ($MATERIALIZE_REPO, else ../shared/tools/materialize-repo beside the checkout,
#      else /work/shared/tools/materialize-repo)
#   3. with network: git clone --depth 1 --branch v0.3.64 https://github.com/Comfy-Org/ComfyUI
# Exit status 0 when DEST holds a ComfyUI at the end, 3 when none could be had.
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-${COMFYUI_DIR:-$HOME/ComfyUI}}
torch_pin=${TEXTLOC_TORCH_PIN:-torch==2.14.1}
torchvision_pin=${TEXTLOC_TORCHVISION_PIN:-torchvision==0.29.*}

if [ ! -f "$dest/main.py" ]; then
  git_dir=${COMFYUI_GIT_DIR:-/work/.mirror/Comfy-Org+ComfyUI/repo}
  tool=${MATERIALIZE_REPO:-}
  if [ -z "$tool" ]; then
    for cand in "$repo_root/../shared/tools/materialize-repo" /work/shared/tools/materialize-repo; do
      if [ -x "$cand" ]; then tool=$cand; break; fi
    done
  fi
  if [ -d "$git_dir" ] && [ -n "$tool" ]; then
    echo "install_comfyui: laying out $git_dir in $dest"
    "$tool" "$git_dir" "$dest"
  elif command -v git >/dev/null && [ -z "${TEXTLOC_OFFLINE:-}" ] \
       && timeout 300 git clone --quiet --depth 1 --branch v0.3.64 https://github.com/Comfy-Org/ComfyUI "$dest" 2>/dev/null; then
    echo "install_comfyui: cloned ComfyUI v0.3.64 into $dest"
  else
    echo "install_comfyui: NO ComfyUI could be had (no $dest/main.py, no snapshot at $git_dir" \
         "with materialize-repo, no network clone); integration tests will not run" >&2
    exit 3
  fi
fi

# ComfyUI's requirements without its torch lines: torch 2.15 + torchaudio 2.11 from PyPI
# do not match and crash transformers' imports; the CPU torch 2.13 wheel has no matching
# torchvision. torchaudio stays out (only ComfyUI's audio nodes need it; they fail to
# import harmlessly).
reqs=$(mktemp)
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$dest/requirements.txt" > "$reqs"
echo "install_comfyui: pip install ComfyUI requirements ($torch_pin, $torchvision_pin, no torchaudio)"
python -m pip install --quiet -r "$reqs" "$torch_pin" "$torchvision_pin"
rm -f "$reqs"
echo "install_comfyui: ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$dest/comfyui_version.py" 2>/dev/null) ready at $dest"
