package nbd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFioThroughput measures the export with fio's nbd engine next to
// nbdkit's memory plugin (the transport's ceiling on this machine), same
// client, same machine. It is a measurement, not an assertion: it runs only
// with COUCHESTOR_NBD_BENCH=1 and prints a table.
//
//	COUCHESTOR_NBD_BENCH=1 go test -run FioThroughput -v ./tests/integration/nbd
func TestFioThroughput(t *testing.T) {
	if os.Getenv("COUCHESTOR_NBD_BENCH") != "1" {
		t.Skip("set COUCHESTOR_NBD_BENCH=1 to run the fio comparison (about 3 minutes)")
	}
	need(t, "fio", "nbdkit")
	runtime := 8 * time.Second
	if s := os.Getenv("COUCHESTOR_NBD_BENCH_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		runtime = time.Duration(n) * time.Second
	}
	const size = 1 << 30
	targets := []struct{ name, uri string }{}

	port := freePort(t)
	nbdkit := exec.Command("nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port), "memory", "1G")
	if err := nbdkit.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nbdkit.Process.Kill(); _ = nbdkit.Wait() })
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", port))
	targets = append(targets, struct{ name, uri string }{"nbdkit memory 1G", fmt.Sprintf("nbd://127.0.0.1:%d", port)})

	mem := startServer(t, serverOpts{backend: "memory", size: size})
	targets = append(targets, struct{ name, uri string }{"couchestor nbd, memory backend", mem.uri()})
	vol := startServer(t, serverOpts{backend: "volume", stripe: "memory", dir: t.TempDir(), size: size})
	targets = append(targets, struct{ name, uri string }{"couchestor ecvolume (3-replica journal 64 MiB, cache 32+64 MiB, memory stripes)", vol.uri()})

	jobs := []struct {
		name, rw, bs string
		depth        int
		iops         bool
	}{
		{"seq write 1 MiB", "write", "1M", 8, false},
		{"seq read 1 MiB", "read", "1M", 8, false},
		{"rand write 4 KiB", "randwrite", "4k", 32, true},
		{"rand read 4 KiB", "randread", "4k", 32, true},
	}
	var rows []string
	for _, tg := range targets {
		for _, j := range jobs {
			args := []string{"--name=" + j.name, "--ioengine=nbd", "--uri=" + tg.uri, "--rw=" + j.rw, "--bs=" + j.bs,
				"--iodepth=" + strconv.Itoa(j.depth), "--size=512M", "--time_based", "--runtime=" + strconv.Itoa(int(runtime.Seconds())),
				"--output-format=json"}
			ctx, cancel := context.WithTimeout(context.Background(), runtime+2*time.Minute)
			out, err := exec.CommandContext(ctx, "fio", args...).Output()
			cancel()
			if err != nil {
				t.Fatalf("fio %s on %s: %v\n%s", j.name, tg.name, err, out)
			}
			var res struct {
				Jobs []struct {
					Read, Write struct {
						BW   float64 `json:"bw_bytes"`
						IOPS float64 `json:"iops"`
					}
				} `json:"jobs"`
			}
			if err := json.Unmarshal(out[strings.Index(string(out), "{"):], &res); err != nil {
				t.Fatalf("fio json: %v", err)
			}
			r := res.Jobs[0].Write
			if strings.Contains(j.rw, "read") {
				r = res.Jobs[0].Read
			}
			v := fmt.Sprintf("%.0f MB/s", r.BW/1e6)
			if j.iops {
				v = fmt.Sprintf("%.0f IOPS", r.IOPS)
			}
			rows = append(rows, fmt.Sprintf("| %s | %s | %s |", tg.name, j.name, v))
		}
	}
	t.Logf("fio --ioengine=nbd, iodepth 8 (1 MiB) / 32 (4 KiB), %s per job, 512 MiB region:\n| target | job | result |\n|---|---|---|\n%s",
		runtime, strings.Join(rows, "\n"))
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitListening(t *testing.T, addr string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not listen within 30s", addr)
}
