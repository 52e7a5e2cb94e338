#!/bin/bash
# Copy an experiment under a new name, as the release's duplicate.sh did (it had the names
# written into the file): the weights folder, the logs folder and the test log.
#
#   bash scripts/utils/duplicate.sh SOURCE TARGET [--weights_root weights] [--logs_root logs]
#
# copies weights_root/SOURCE/ to weights_root/TARGET/, logs_root/SOURCE/ to logs_root/TARGET/
# and logs_root/SOURCE_log.jsonl to logs_root/TARGET_log.jsonl (the logs when there are any).
# Continue the copy with the training flags plus --experiment_name TARGET --resume.
# Refuses, changing nothing, when SOURCE has no weights folder or TARGET has any of the three.
set -euo pipefail

usage="usage: duplicate.sh SOURCE TARGET [--weights_root DIR] [--logs_root DIR]"
# One line whatever the names hold: control characters (a newline among them) are shown as '?'.
fail() { local line=$1; echo "error: ${line//[[:cntrl:]]/?}" >&2; exit 2; }

weights_root=weights
logs_root=logs
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --weights_root|--logs_root)
      [ $# -ge 2 ] || fail "$1 needs a folder; $usage"
      declare "${1#--}=$2"
      shift 2 ;;
    --weights_root=*|--logs_root=*)
      opt=${1%%=*}
      declare "${opt#--}=${1#*=}"
      shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) fail "unknown option $1; $usage" ;;
    *) names+=("$1"); shift ;;
  esac
done
# An empty root would make every path absolute: SOURCE and TARGET at the file system's root.
[ -n "$weights_root" ] || fail "--weights_root is empty: give the folder (default weights)"
[ -n "$logs_root" ] || fail "--logs_root is empty: give the folder (default logs)"
[ ${#names[@]} -eq 2 ] || fail "give SOURCE and TARGET experiment names; $usage"
source=${names[0]}
target=${names[1]}
# The names train.py takes (files.check_name): one plain component, no control characters.
for name in "$source" "$target"; do
  case "$name" in
    ''|*/*|.|..|*[[:cntrl:]]*)
      printf -v shown '%q' "$name"
      fail "$shown is not an experiment name: give one plain name (no \"/\", \"..\" or control characters)" ;;
  esac
done

pairs=("$weights_root/$source" "$weights_root/$target"
       "$logs_root/$source" "$logs_root/$target"
       "$logs_root/${source}_log.jsonl" "$logs_root/${target}_log.jsonl")
[ -d "$weights_root/$source" ] || fail "no weights folder $weights_root/$source/: \
check SOURCE and --weights_root"
found=()
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
  # -L too: a dangling symlink is a target that exists (cp would write through it).
  [ ! -e "${pairs[i+1]}" ] && [ ! -L "${pairs[i+1]}" ] || fail "${pairs[i+1]} already exists: pick another TARGET or remove it"
  [ ! -e "${pairs[i]}" ] || found+=("$i")
done

# Each copy is made in a fresh folder of its own (mktemp: created here, so nothing planted at
# a guessable name is written through) and gets its final name only once whole, so an
# interrupted run leaves no half target. With the file size limit's signal ignored, a copy
# past `ulimit -f` is cp's error, refused in one line like any other.
trap '' XFSZ
# All or nothing: a refusal midway removes the copies this run made.
tmp=""
made=()
trap 'status=$?; [ -z "$tmp" ] || rm -rf -- "$tmp"
      [ "$status" -eq 0 ] || [ ${#made[@]} -eq 0 ] || rm -rf -- "${made[@]}"' EXIT
for i in "${found[@]}"; do
  src=${pairs[i]}
  dst=${pairs[i+1]}
  tmp=$(mktemp -d "$(dirname -- "$dst")/.duplicate.XXXXXX" 2>/dev/null) ||
    fail "cannot create a folder beside $dst: check that its root is writable"
  if ! err=$(cp -a -- "$src" "$tmp/copy" 2>&1); then
    fail "could not copy $src to $dst (${err%%$'\n'*}); nothing is left under TARGET's name"
  fi
  # -T: never into a folder that appeared at dst meanwhile; -n: never over a file there.
  mv -T -n -- "$tmp/copy" "$dst" 2>/dev/null || true
  [ ! -e "$tmp/copy" ] || fail "$dst appeared while copying: pick another TARGET or remove it"
  made+=("$dst")
  rm -rf -- "$tmp"
  tmp=""
  echo "copied $src to $dst"
done
