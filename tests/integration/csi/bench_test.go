package csi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// BenchmarkFioDriverVsLoop (make bench-csi) runs the same four fio jobs on
// ext4 mounted through the driver (export over 3 shard servers, policy 2+1,
// nbdfuse, loop) and on ext4 over a loop device of a local file on the same
// disk (the single-copy anchor), in one run, and reports MiB/s, IOPS and
// CPU seconds per GiB moved: of fio, the export, nbdfuse and the shard
// servers (user+system from /proc; kernel loop and FUSE threads are not
// counted for either).
func BenchmarkFioDriverVsLoop(b *testing.B) {
	if os.Getenv("COUCHESTOR_CSI_FIO") == "" {
		b.Skip("run through `make bench-csi` (COUCHESTOR_CSI_FIO=1): minutes of fio")
	}
	if os.Geteuid() != 0 {
		b.Skip("*** NOT RUN: needs root (loop devices, FUSE, mount) ***")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		b.Skip("*** NOT RUN: fio not in PATH (hack/nbd-clients.sh installs it) ***")
	}
	size := int64(512 << 20)
	if s := os.Getenv("COUCHESTOR_CSI_FIO_BYTES"); s != "" {
		size, _ = strconv.ParseInt(s, 10, 64)
	}
	for i := 0; i < b.N; i++ {
		benchOnce(b, size)
	}
}

type fioJob struct{ name, rw, bs string }

var fioJobs = []fioJob{{"seq-write-1M", "write", "1M"}, {"seq-read-1M", "read", "1M"}, {"rand-read-4K", "randread", "4k"}, {"rand-write-4K", "randwrite", "4k"}}

func benchOnce(b *testing.B, size int64) {
	c := newCluster(b, 3)
	dir := b.TempDir()
	p := c.startPlugin(dir)
	defer p.stop()
	cc, err := grpcConn(p)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	ctl, nd := csipb.NewControllerClient(cc), csipb.NewNodeClient(cc)
	ctx := context.Background()
	volSize := size + size/2 + 64<<20
	cr, err := ctl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-fio", CapacityRange: &csipb.CapacityRange{RequiredBytes: volSize},
		VolumeCapabilities: []*csipb.VolumeCapability{mountCap("ext4")}, Parameters: map[string]string{"erasureCodingPolicy": policyName}})
	if err != nil {
		b.Fatal(err)
	}
	id := cr.GetVolume().GetVolumeId()
	staging := filepath.Join(dir, "staging")
	if _, err := nd.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("ext4")}); err != nil {
		b.Fatal(err)
	}
	driver := runFio(b, staging, size, func() []int { return pidsWith(p.stateDir, c.dir) })
	if _, err := nd.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		b.Fatal(err)
	}

	// The anchor: ext4 on a loop device over a file on the same disk.
	img := filepath.Join(dir, "anchor.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(img, volSize); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		b.Fatal(err)
	}
	loop := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "--detach", loop).Run()
	mnt := filepath.Join(dir, "anchor")
	_ = os.MkdirAll(mnt, 0o700)
	for _, args := range [][]string{{"mkfs.ext4", "-q", "-F", "-m0", loop}, {"mount", loop, mnt}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v %s", args, err, out)
		}
	}
	defer exec.Command("umount", mnt).Run()
	anchor := runFio(b, mnt, size, func() []int { return nil })

	fmt.Printf("\nfio, %d MiB file, ext4, one run (%s)\n", size>>20, machine())
	fmt.Printf("%-14s | %-34s | %-34s\n", "job", "driver (2+1 over 3 shard servers)", "ext4 on loop over a local file")
	for i, j := range fioJobs {
		d, a := driver[i], anchor[i]
		fmt.Printf("%-14s | %8.1f MiB/s %7.0f IOPS %5.2f cpu-s/GiB | %8.1f MiB/s %7.0f IOPS %5.2f cpu-s/GiB\n", j.name,
			d.mibps, d.iops, d.cpuPerGiB, a.mibps, a.iops, a.cpuPerGiB)
	}
}

type fioResult struct{ mibps, iops, cpuPerGiB float64 }

func runFio(b *testing.B, dir string, size int64, helpers func() []int) []fioResult {
	var res []fioResult
	file := filepath.Join(dir, "fio.dat")
	for _, j := range fioJobs {
		pids := helpers()
		before := cpuSeconds(pids)
		args := []string{"--name=" + j.name, "--filename=" + file, "--size=" + strconv.FormatInt(size, 10), "--rw=" + j.rw, "--bs=" + j.bs,
			"--ioengine=libaio", "--direct=1", "--iodepth=16", "--end_fsync=1", "--output-format=json"}
		if strings.HasPrefix(j.rw, "rand") {
			args = append(args, "--runtime=30", "--time_based")
		}
		out, err := exec.Command("fio", args...).Output()
		if err != nil {
			b.Fatalf("fio %v: %v", args, err)
		}
		after := cpuSeconds(pids)
		var r struct {
			Jobs []struct {
				Read, Write struct {
					BwBytes float64 `json:"bw_bytes"`
					IOPS    float64 `json:"iops"`
					IOBytes float64 `json:"io_bytes"`
				}
				UsrCPU  float64 `json:"usr_cpu"`
				SysCPU  float64 `json:"sys_cpu"`
				Elapsed float64 `json:"elapsed"`
			}
		}
		if err := json.Unmarshal(out[strings.IndexByte(string(out), '{'):], &r); err != nil {
			b.Fatalf("fio output: %v", err)
		}
		jr := r.Jobs[0]
		st := jr.Write
		if strings.Contains(j.rw, "read") {
			st = jr.Read
		}
		fioCPU := (jr.UsrCPU + jr.SysCPU) / 100 * jr.Elapsed
		gib := st.IOBytes / (1 << 30)
		res = append(res, fioResult{mibps: st.BwBytes / (1 << 20), iops: st.IOPS, cpuPerGiB: (after - before + fioCPU) / gib})
	}
	return res
}

// pidsWith lists processes whose command line names one of the dirs (the
// export and nbdfuse under the state dir, the shard servers under the
// cluster dir).
func pidsWith(dirs ...string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cl := string(b)
		if strings.Contains(cl, "\x00csi\x00") {
			continue
		}
		for _, d := range dirs {
			if strings.Contains(cl, d) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

func cpuSeconds(pids []int) float64 {
	var sum float64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		u, _ := strconv.ParseFloat(f[11], 64)
		k, _ := strconv.ParseFloat(f[12], 64)
		sum += (u + k) / 100 // USER_HZ
	}
	return sum
}

func machine() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			model = strings.TrimSpace(l[strings.IndexByte(l, ':')+1:])
			break
		}
	}
	return fmt.Sprintf("%s, %d CPUs", model, strings.Count(string(b), "processor\t:"))
}
