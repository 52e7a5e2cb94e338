# Sourced by launch_demo.sh and launch_own_data.sh: their checks of the environment and the
# flags they pass on.

# check_count VAR WHAT: refuse, with one line and exit status 2, a VAR that is not a positive
# whole number of at most 9 digits (bash's arithmetic and `timeout` misread longer ones).
check_count() {
  local value=${!1} shown
  if ! [[ $value =~ ^[0-9]{1,9}$ ]] || [ "$value" -lt 1 ]; then
    # A value holding a newline or control character is shown escaped: the line stays one.
    if [[ $value =~ [[:cntrl:]] ]]; then printf -v shown '%q' "$value"; else shown="'$value'"; fi
    echo "error: $1 $shown must be a positive whole number of $2, at most 999999999" >&2
    exit 2
  fi
}

# check_python: refuse, with one line and exit status 2, a PYTHON that is no program (the
# scripts' first command failed with status 127 and two lines of `timeout`'s). `type -P`, not
# `command -v`: `timeout` runs programs only, so a shell builtin or keyword (exit, cd) is none.
check_python() {
  if ! type -P -- "$PYTHON" >/dev/null 2>&1; then
    local shown
    printf -v shown '%q' "$PYTHON"
    echo "error: PYTHON $shown is not a program: set PYTHON to the interpreter the requirements are installed in (e.g. PYTHON=.venv/bin/python)" >&2
    exit 2
  fi
}

# last_flag FLAG DEFAULT ARGS...: the value the commands take for FLAG from ARGS, else
# DEFAULT: as argparse reads them, the last one given wins, as --flag value or --flag=value,
# the flag or a prefix of it (one that names another flag too makes the commands refuse).
last_flag() {
  local flag=$1 value=$2 args i name
  shift 2
  args=("$@")
  for i in "${!args[@]}"; do
    name=${args[i]%%=*}
    if [[ $name == --?* && $flag == "$name"* ]]; then
      if [[ ${args[i]} == *=* ]]; then value=${args[i]#*=}; else value=${args[i+1]:-$value}; fi
    fi
  done
  printf '%s\n' "$value"
}

# root_of KIND DEFAULT ARGS...: the folder the commands use for --KIND_root: under a
# --base_root among ARGS, its KIND subfolder (the release's rule), else last_flag's.
root_of() {
  local kind=$1 default=$2 base
  shift 2
  base=$(last_flag --base_root '' "$@")
  if [ -n "$base" ]; then printf '%s\n' "$base/$kind"; else last_flag "--${kind}_root" "$default" "$@"; fi
}

# train_capped WEIGHTS_DIR COMMAND...: run the training COMMAND under the TRAIN_SECONDS cap
# (SIGINT: train.py finishes its iteration and saves); stop the script, with one line, when
# it failed or when the cap came before its first checkpoint in WEIGHTS_DIR, so that nothing
# samples a run that is not there.
train_capped() {
  local weights=$1 start rc=0
  shift
  start=$(date +%s)
  # In the background, so that a TERM or INT sent to this script reaches the training (through
  # timeout, which passes it on): a foreground child outlived the script, holding the
  # experiment's lock. The script then waits for it to save and exits as by that signal.
  timeout --signal=INT --kill-after=120 "$TRAIN_SECONDS" "$@" &
  TRAINING=$!
  trap 'kill -TERM "$TRAINING" 2>/dev/null; wait "$TRAINING"; exit 143' TERM
  trap 'kill -INT "$TRAINING" 2>/dev/null; wait "$TRAINING"; exit 130' INT
  wait "$TRAINING" || rc=$?
  trap - TERM INT
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
    # Status 2 comes with train.py's own line saying why.
    [ "$rc" -eq 2 ] || echo "train.py failed with exit status $rc" >&2
    exit "$rc"
  fi
  if [ ! -f "$weights/state_dict.pth" ]; then
    echo "error: train.py left no checkpoint in $weights$([ "$rc" -eq 124 ] && echo ": the TRAIN_SECONDS cap ($TRAIN_SECONDS s) came first; raise TRAIN_SECONDS")" >&2
    exit 2
  fi
  echo "training took $(( $(date +%s) - start ))s$([ "$rc" -eq 124 ] && echo ' (stopped by the TRAIN_SECONDS cap)')"
}
