# Forks until the pids limit stops it, then reports how far it got and cleans up.
python3 - <<'PY'
import os, signal, time
children = []
try:
    for _ in range(5000):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    print("forked", len(children), "processes: no limit")
except OSError as err:
    print("fork failed after", len(children), "processes:", err.strerror)
for pid in children:
    os.kill(pid, signal.SIGKILL)
PY
