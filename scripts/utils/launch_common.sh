# Sourced by launch_demo.sh and launch_own_data.sh: their checks of the environment and the
# flags they pass on.

# check_count VAR WHAT: refuse, with one line and exit status 2, a VAR that is not a positive
# whole number of at most 9 digits (bash's arithmetic and `timeout` misread longer ones).
check_count() {
  local value=${!1}
  if ! [[ $value =~ ^[0-9]{1,9}$ ]] || [ "$value" -lt 1 ]; then
    echo "error: $1 '$value' must be a positive whole number of $2, at most 999999999" >&2
    exit 2
  fi
}

# last_flag FLAG DEFAULT ARGS...: the value the commands take for FLAG from ARGS (the last
# one given wins, as in argparse; --flag value and --flag=value), else DEFAULT.
last_flag() {
  local flag=$1 value=$2 args i
  shift 2
  args=("$@")
  for i in "${!args[@]}"; do
    case ${args[i]} in
      "$flag"=*) value=${args[i]#"$flag"=} ;;
      "$flag") value=${args[i+1]:-$value} ;;
    esac
  done
  printf '%s\n' "$value"
}
