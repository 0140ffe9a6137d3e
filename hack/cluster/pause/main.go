// Command pause is the pod sandbox process of hack/cluster.sh's local
// cluster (containerd's sandbox_image): it sleeps until SIGTERM or SIGINT and
// reaps the children that the pod's processes leave behind (it is PID 1 of
// the pod's PID namespace when one is shared). A static Go binary so the
// cluster needs no image registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
