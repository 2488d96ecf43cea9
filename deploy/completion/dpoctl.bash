# bash completion for dpoctl: commands, each command's options, states and formats, job files, and job
# ids and names from the daemon (`dpoctl list -q` and `list -o json`, asked only when a job is wanted).
# Source it (`source deploy/completion/dpoctl.bash`); `cmake --install` puts it where bash-completion
# finds it (share/bash-completion/completions/dpoctl).

_dpoctl_commands="submit list get checkpoints watch logs metrics cancel delete restart health drain undrain status help"

# The options of a command, as its --help lists them.
_dpoctl_options() {
  case "$1" in
    submit) echo "--set --name --dry-run --watch --events-jsonl --no-progress -q --quiet --addr --help" ;;
    list) echo "--state --name --limit -q --quiet -o --output --json --addr --help" ;;
    get | checkpoints) echo "-o --output --json --addr --help" ;;
    watch) echo "--after-seq --events-jsonl --no-progress --retries --addr --help" ;;
    metrics) echo "--format --addr --help" ;;
    logs) echo "-f --follow --rank --attempt --tail --after-offset --jsonl --retries --addr --help" ;;
    cancel) echo "--wait --addr --help" ;;
    delete) echo "--run-dir --addr --help" ;;
    restart | drain | undrain) echo "--addr --help" ;;
    status) echo "-o --output --json --addr --help" ;;
    health) echo "--service --addr --help" ;;
  esac
}

# Job ids and the names of the newest jobs (those that only one job has), from the daemon the command line points at (nothing if it
# cannot be reached: completion must never hang or print errors).
_dpoctl_jobs() {
  local -a ctl=("${COMP_WORDS[0]}" "${_dpoctl_global[@]}")
  timeout 2 "${ctl[@]}" list -q --limit 200 2>/dev/null
  if command -v jq >/dev/null 2>&1; then
    # Only names one job has: an ambiguous name is refused where an id is wanted.
    timeout 2 "${ctl[@]}" list -o json --limit 200 2>/dev/null |
      jq -r '[.[].name // empty | select(. != "")] | group_by(.) | map(select(length == 1) | .[0]) | .[]' 2>/dev/null
  fi
}

_dpoctl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
  local i cmd="" word
  _dpoctl_global=()
  # The command is the first word that is not a global option or its value.
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    case "$word" in
      --addr | --token-file | --tls-ca)
        _dpoctl_global+=("$word" "${COMP_WORDS[i + 1]}")
        ((i++))
        ;;
      --addr=*) _dpoctl_global+=("$word") ;;
      -*) ;;
      *)
        cmd=$word
        break
        ;;
    esac
  done

  if [ -z "$cmd" ]; then
    case "$prev" in
      --token-file | --tls-ca) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
      --addr) COMPREPLY=(); return 0 ;;
    esac
    if [[ "$cur" == -* ]]; then
      COMPREPLY=($(compgen -W "--addr --token-file --tls-ca --help --version" -- "$cur"))
    else
      COMPREPLY=($(compgen -W "$_dpoctl_commands" -- "$cur"))
    fi
    return 0
  fi

  case "$prev" in
    --state)
      local states="queued starting running succeeded failed cancelled preempted"
      COMPREPLY=($(compgen -W "$states" -- "${cur##*,}"))
      return 0
      ;;
    -o | --output) COMPREPLY=($(compgen -W "table json yaml" -- "$cur")); return 0 ;;
    --format) COMPREPLY=($(compgen -W "csv jsonl" -- "$cur")); return 0 ;;
    --set | --name | --limit | --after-seq | --retries | --service | --addr | --rank | --attempt | --tail | --after-offset)
      COMPREPLY=(); return 0 ;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_dpoctl_options "$cmd")" -- "$cur"))
    return 0
  fi
  case "$cmd" in
    submit) COMPREPLY=($(compgen -f -X '!*.yaml' -- "$cur") $(compgen -f -X '!*.yml' -- "$cur") $(compgen -d -- "$cur")) ;;
    help) COMPREPLY=($(compgen -W "$_dpoctl_commands" -- "$cur")) ;;
    get | checkpoints | watch | logs | metrics | cancel | delete | restart)
      COMPREPLY=($(compgen -W "$(_dpoctl_jobs)" -- "$cur"))
      ;;
    *) COMPREPLY=() ;;
  esac
  return 0
}

complete -F _dpoctl dpoctl
