# Shared by start-local-slurm.sh and stop-local-slurm.sh (sourced; the caller defines log()).

# alive PIDFILE COMM -> true if the pid file names a live process with that command name
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

# stop_pidfile PIDFILE COMM -> TERM the process (KILL after 15 s) and remove the pid file
stop_pidfile() {
  local pf=$1 name=$2 pid i
  if ! alive "$pf" "$name"; then rm -f "$pf"; return 0; fi
  pid=$(cat "$pf"); kill -TERM "$pid"
  for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; log "$name: pid $pid killed with SIGKILL"
  else log "$name: pid $pid stopped"; fi
  rm -f "$pf"
}
