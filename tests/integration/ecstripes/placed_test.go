package ecstripes

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
	"github.com/billyronks/couchestor/internal/scheme"
	"github.com/billyronks/couchestor/pkg/placement"
	"github.com/billyronks/couchestor/pkg/registry"
	"github.com/billyronks/couchestor/pkg/shardserver"
	"github.com/billyronks/couchestor/pkg/stripe"
	"github.com/billyronks/couchestor/tests/testenv"
)

// placementGroups creates count ECPlacementGroups of policy (width slots):
// slot i of group g is the pool member(g, i) names, as the placement-group
// controller would record them (these tests fix the members themselves).
func (c *cluster) placementGroups(policy string, count, width int, member func(g, slot int) string) {
	c.t.Helper()
	ctx := context.Background()
	for g := 0; g < count; g++ {
		o := &storagev1alpha1.ECPlacementGroup{ObjectMeta: metav1.ObjectMeta{Name: policy + "-pg-" + strconv.Itoa(g)},
			Spec: storagev1alpha1.ECPlacementGroupSpec{PolicyRef: policy, Group: int32(g), GroupCount: int32(count), Width: int32(width)}}
		if err := c.env.Client.Create(ctx, o); err != nil {
			c.t.Fatal(err)
		}
		o.Status.Epoch = 1
		for slot := 0; slot < width; slot++ {
			o.Status.Members = append(o.Status.Members, storagev1alpha1.PlacementMember{Slot: int32(slot), Pool: member(g, slot), State: storagev1alpha1.MemberUp})
		}
		if err := c.env.Client.Status().Update(ctx, o); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) placedVolume(name, policy string, size int64) *stripe.Volume {
	c.t.Helper()
	v := &storagev1.ECVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.ECVolumeSpec{SizeBytes: size, PolicyRef: policy, StripeLayout: storagev1.LayoutPlacementGroups}}
	if err := c.env.Client.Create(context.Background(), v); err != nil {
		c.t.Fatal(err)
	}
	vol, err := c.store.OpenVolume(context.Background(), name)
	if err != nil {
		c.t.Fatal(err)
	}
	return vol
}

// roundRobin puts slot i of group g on pool (g+i) mod n.
func roundRobin(n int) func(g, slot int) string {
	return func(g, slot int) string { return "pool-" + strconv.Itoa((g+slot)%n) }
}

func (c *cluster) stripeCount(t *testing.T) int {
	t.Helper()
	var list storagev1.ECStripeList
	if err := c.env.Client.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

// holding is what pool holds of stripe id of v.
func (c *cluster) holding(t *testing.T, pool string, v *stripe.Volume, id int64) []shardserver.HeldShard {
	t.Helper()
	for _, s := range c.servers {
		if s.pool == pool {
			h, err := c.client.StripeShards(context.Background(), testenv.Addr(s.port), v.Name(), string(v.Object.UID), id)
			if err != nil {
				t.Fatal(err)
			}
			return h.Shards
		}
	}
	t.Fatalf("no server of pool %s", pool)
	return nil
}

func groupOf(v *stripe.Volume, id int64, count int) int {
	return int(placement.GroupOf(string(v.Object.UID), uint64(id), uint32(count)))
}

// A PlacementGroups volume end to end over 7 shard servers as processes:
// its stripes' shard i lands on the slot-i member of the stripe's group
// (and nowhere else), no ECStripe object is written, reads are exact, a
// partial overwrite is copy-on-write (new generation at new offsets, the old
// one freed), a stripe never written reads as zeros, a lost member is read
// around (degraded, exact), a corrupt shard is detected by its checksum and
// read around, and a stripe whose members mostly do not answer is an error
// (ErrInDoubt), never zeros. A second Store without any memory reads the
// same: nothing of it lives in the writer.
func TestPlacementGroupLayoutEndToEnd(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 7)
	ctx := context.Background()
	c.policy("rs-4-2", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	const groups = 8
	const stripes = 24
	v := c.placedVolume("vol-pg", "rs-4-2", stripes<<20)
	// The group of the volume's last stripe (the volume UID is random) has
	// pools without a shard server in its slots 2..5.
	ghost := groupOf(v, stripes-1, groups)
	c.placementGroups("rs-4-2", groups, 6, func(g, slot int) string {
		if g == ghost && slot >= 2 {
			return "ghost-" + strconv.Itoa(slot)
		}
		return roundRobin(7)(g, slot)
	})
	c.store.Known = &stripe.Known{}
	c.store.Groups = &stripe.Groups{}
	written := []int64{}
	data := make([]byte, stripes<<20)
	var ghostStripe, unwritten int64 = -1, -1
	for id := int64(0); id < stripes; id++ {
		switch {
		case groupOf(v, id, groups) == ghost && ghostStripe < 0:
			ghostStripe = id
		case groupOf(v, id, groups) != ghost && unwritten < 0 && id > 0:
			unwritten = id
		case groupOf(v, id, groups) != ghost:
			copy(data[id<<20:], random(t, 1<<20))
			if err := c.store.WriteAt(ctx, v, data[id<<20:(id+1)<<20], id<<20); err != nil {
				t.Fatalf("write stripe %d: %v", id, err)
			}
			written = append(written, id)
		}
	}
	if ghostStripe < 0 || unwritten < 0 || len(written) < 4 {
		t.Fatalf("the volume's stripes do not cover the cases (ghost %d, unwritten %d, written %v): pick another size", ghostStripe, unwritten, written)
	}
	if n := c.stripeCount(t); n != 0 {
		t.Fatalf("%d ECStripe objects after writing a PlacementGroups volume", n)
	}
	for _, id := range written {
		g := groupOf(v, id, groups)
		for i := 0; i < 7; i++ {
			pool := "pool-" + strconv.Itoa(i)
			slot := (i - g + 7) % 7
			held := c.holding(t, pool, v, id)
			if slot >= 6 {
				if len(held) != 0 {
					t.Fatalf("stripe %d (group %d): pool %s is no member but holds %+v", id, g, pool, held)
				}
				continue
			}
			if len(held) != 1 || held[0].ShardIndex != slot || held[0].Generation != 1 || held[0].PlacementGroups != groups {
				t.Fatalf("stripe %d (group %d): pool %s (slot %d) holds %+v, want shard %d generation 1", id, g, pool, slot, held, slot)
			}
		}
	}
	readRange := func(st *stripe.Store, id int64, when string) stripe.ReadReport {
		t.Helper()
		got := make([]byte, 1<<20)
		rep, err := st.ReadAt(ctx, v, got, id<<20)
		if err != nil {
			t.Fatalf("read stripe %d %s: %v", id, when, err)
		}
		if !bytes.Equal(got, data[id<<20:(id+1)<<20]) {
			t.Fatalf("read stripe %d %s: wrong bytes", id, when)
		}
		return rep
	}
	fresh := *c.store
	fresh.Known, fresh.Groups = nil, nil
	for _, id := range append(written, unwritten) {
		readRange(c.store, id, "by the writer")
		readRange(&fresh, id, "by a Store that remembers nothing")
	}
	// Copy-on-write: 8 KiB into a written stripe.
	id := written[1]
	used := c.usedBytes()
	patch := random(t, 8192)
	if err := c.store.WriteAt(ctx, v, patch, id<<20+4096); err != nil {
		t.Fatal(err)
	}
	copy(data[id<<20+4096:], patch)
	g := groupOf(v, id, groups)
	for slot := 0; slot < 6; slot++ {
		held := c.holding(t, roundRobin(7)(g, slot), v, id)
		if len(held) != 1 || held[0].Generation != 2 {
			t.Fatalf("after the overwrite slot %d holds %+v, want generation 2 alone (the old one freed)", slot, held)
		}
	}
	if got := c.usedBytes(); got != used {
		t.Fatalf("%d bytes used after the overwrite, %d before: the superseded generation was not freed", got, used)
	}
	readRange(c.store, id, "after copy-on-write")
	readRange(&fresh, id, "after copy-on-write, by a Store that remembers nothing")

	// A lost member: stop slot 0's server of a written stripe's group.
	id = written[2]
	g = groupOf(v, id, groups)
	lost := c.servers[(g+0)%7]
	c.stop(lost)
	c.waitServers(6)
	if rep := readRange(&fresh, id, "with its slot-0 member stopped"); rep.Missing != 1 || rep.Degraded != 1 {
		t.Fatalf("degraded read report %+v, want 1 missing shard", rep)
	}
	c.start(lost)
	c.waitServers(7)

	// A corrupt shard: flip a payload byte of shard 1 of a written stripe.
	id = written[3]
	g = groupOf(v, id, groups)
	pool := roundRobin(7)(g, 1)
	held := c.holding(t, pool, v, id)
	tamper(t, c, &storagev1.ECStripe{Spec: storagev1.ECStripeSpec{ShardLocations: []storagev1.ShardLocation{{PoolName: pool, Offset: held[0].Offset}}}}, 0)
	got := make([]byte, 1<<20)
	rep, err := fresh.ReadAt(ctx, v, got, id<<20)
	if err != nil || rep.Corrupt != 1 || !bytes.Equal(got, data[id<<20:(id+1)<<20]) {
		t.Fatalf("read of a stripe with a corrupt shard: %+v %v (exact: %v)", rep, err, bytes.Equal(got, data[id<<20:(id+1)<<20]))
	}

	// Four of six members of the ghost stripe's group have no server: its
	// absence is unknown, so it is an error, not zeros; and a write of it
	// cannot reach a quorum.
	_, err = fresh.ReadAt(ctx, v, make([]byte, 1<<20), ghostStripe<<20)
	if !errors.Is(err, stripe.ErrInDoubt) {
		t.Fatalf("read of a stripe whose group mostly does not answer: %v, want ErrInDoubt", err)
	}
	if err := c.store.WriteAt(ctx, v, random(t, 1<<20), ghostStripe<<20); !errors.Is(err, stripe.ErrInDoubt) {
		t.Fatalf("write of a stripe with 2 reachable members: %v, want ErrInDoubt (its generation cannot be decided)", err)
	}
	// The layout is fixed at creation.
	cur := &storagev1.ECVolume{}
	if err := c.env.Client.Get(ctx, client.ObjectKey{Name: v.Name()}, cur); err != nil {
		t.Fatal(err)
	}
	cur.Spec.StripeLayout = storagev1.LayoutECStripes
	if err := c.env.Client.Update(ctx, cur); err == nil || !strings.Contains(err.Error(), "spec.stripeLayout is immutable") {
		t.Fatalf("changing spec.stripeLayout: %v", err)
	}
	if _, err := c.store.CollectOrphans(ctx, v.Name(), 0); !errors.Is(err, stripe.ErrLayoutNotCovered) {
		t.Fatalf("orphan collection of a PlacementGroups volume: %v, want ErrLayoutNotCovered (it would free every shard)", err)
	}
	if n := c.stripeCount(t); n != 0 {
		t.Fatalf("%d ECStripe objects at the end", n)
	}
}

// A writer whose volume a newer writer took over (its epoch raised on the
// members) cannot make a stripe version current: its shard writes are
// refused on every member the new writer fenced, so it never reaches k of
// them; the new writer's data is what every reader sees.
func TestFencedWriterCannotWinAQuorum(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 6)
	ctx := context.Background()
	c.policy("rs-4-2", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	c.placementGroups("rs-4-2", 4, 6, roundRobin(6))
	v := c.placedVolume("vol-fence", "rs-4-2", 4<<20)
	older := *c.store
	older.WriterEpoch, older.Known, older.Groups = 1, &stripe.Known{}, &stripe.Groups{}
	first := random(t, 4<<20)
	if err := older.WriteAt(ctx, v, first, 0); err != nil {
		t.Fatal(err)
	}
	newer := *c.store
	newer.WriterEpoch, newer.Known, newer.Groups = 2, &stripe.Known{}, &stripe.Groups{}
	got := make([]byte, 4<<20)
	if _, err := newer.ReadAt(ctx, v, got, 0); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("the newer writer's first read: %v (exact: %v)", err, bytes.Equal(got, first))
	}
	// The older writer, still running, writes every stripe again.
	err := older.WriteAt(ctx, v, random(t, 4<<20), 0)
	if !errors.Is(err, shardserver.ErrFenced) {
		t.Fatalf("the fenced writer's write: %v, want ErrFenced", err)
	}
	for id := int64(0); id < 4; id++ {
		g := groupOf(v, id, 4)
		for slot := 0; slot < 6; slot++ {
			for _, h := range c.holding(t, roundRobin(6)(g, slot), v, id) {
				if h.WriterEpoch != 1 || h.Generation != 1 {
					t.Fatalf("stripe %d slot %d holds %+v after the fenced write", id, slot, h)
				}
			}
		}
	}
	fresh := *c.store
	if _, err := fresh.ReadAt(ctx, v, got, 0); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("a reader after the fenced write: %v (exact: %v)", err, bytes.Equal(got, first))
	}
	second := random(t, 4<<20)
	if err := newer.WriteAt(ctx, v, second, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.ReadAt(ctx, v, got, 0); err != nil || !bytes.Equal(got, second) {
		t.Fatalf("a reader after the newer writer's write: %v (exact: %v)", err, bytes.Equal(got, second))
	}
	// An older writer that starts after the newer one is refused at once.
	late := *c.store
	late.WriterEpoch, late.Groups = 1, &stripe.Groups{}
	if _, err := late.ReadAt(ctx, v, got, 0); !errors.Is(err, shardserver.ErrFenced) {
		t.Fatalf("an older writer starting late: %v, want ErrFenced", err)
	}
}

// placedWrite is write i of the killed-writer test: 64 KiB at a place
// derived from i (partial writes: each is a read-modify-write of its
// stripe), with bytes derived from i.
func placedWrite(i int, stripes int64) (off int64, p []byte) {
	r := rand.New(rand.NewPCG(uint64(i), 77))
	id := int64(r.IntN(int(stripes)))
	off = id<<20 + int64(r.IntN(16))*(64<<10)
	p = make([]byte, 64<<10)
	for j := range p {
		p[j] = byte(r.Uint32())
	}
	return off, p
}

// TestPlacedWriterChild is the writer of TestSIGKILLedWriterOnPlacementGroups
// (it runs only as that test's child process): writes from
// ECSTRIPES_PLACED_FROM on, one at a time, printing "begin i" before and
// "ack i" after each acknowledged write.
func TestPlacedWriterChild(t *testing.T) {
	if os.Getenv("ECSTRIPES_PLACED_CHILD") == "" {
		t.Skip("the child process of TestSIGKILLedWriterOnPlacementGroups")
	}
	ctx := context.Background()
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("ECSTRIPES_PLACED_KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := registry.ClientConfigFromSecret(ctx, kc, registry.DefaultNamespace, registry.DefaultShardSecret)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := shardserver.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	epoch, _ := strconv.ParseUint(os.Getenv("ECSTRIPES_PLACED_EPOCH"), 10, 64)
	st := &stripe.Store{Client: kc, Shards: sc, Registry: &registry.Lookup{Client: kc}, MayastorNamespace: "mayastor",
		Known: &stripe.Known{}, Groups: &stripe.Groups{}, WriterEpoch: epoch}
	v, err := st.OpenVolume(ctx, os.Getenv("ECSTRIPES_PLACED_VOLUME"))
	if err != nil {
		t.Fatal(err)
	}
	from, _ := strconv.Atoi(os.Getenv("ECSTRIPES_PLACED_FROM"))
	st.AfterShardsDurable = func(string, int64, int64) { fmt.Printf("durable\n") }
	for i := from; ; i++ {
		off, p := placedWrite(i, v.Stripes())
		fmt.Printf("begin %d\n", i)
		if err := st.WriteAt(ctx, v, p, off); err != nil {
			fmt.Printf("error %d %v\n", i, err)
			os.Exit(3)
		}
		fmt.Printf("ack %d\n", i)
	}
}

// A writer process SIGKILLed mid-write (right after it announced a write,
// several times, each time a new writer process with a higher epoch
// continuing): every acknowledged write reads back, and the write in flight
// at the kill reads either wholly applied or not at all — from a reader that
// remembers nothing, so from what the members hold. The killed writer's
// partial generations are stepped past and freed by the next write of the
// stripe.
func TestSIGKILLedWriterOnPlacementGroups(t *testing.T) {
	testenv.RequireAssets(t)
	c := newCluster(t, 6)
	ctx := context.Background()
	c.policy("rs-4-2", storagev1.AlgorithmReedSolomon, 4, 2, 1<<20)
	c.placementGroups("rs-4-2", 4, 6, roundRobin(6))
	const stripes = 4
	v := c.placedVolume("vol-kill", "rs-4-2", stripes<<20)
	image := make([]byte, stripes<<20) // what every acknowledged write made
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	rounds := 4
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(self, "-test.run", "^TestPlacedWriterChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ECSTRIPES_PLACED_CHILD=1", "ECSTRIPES_PLACED_KUBECONFIG="+c.kubeconfig,
			"ECSTRIPES_PLACED_VOLUME="+v.Name(), "ECSTRIPES_PLACED_FROM="+strconv.Itoa(next), "ECSTRIPES_PLACED_EPOCH="+strconv.Itoa(round+1))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill at the (5+3*round)-th write of this process: acknowledged
		// writes before it, one in flight: in even rounds as it is
		// announced, in odd ones once its shards are durable at quorum
		// and before the old generation is freed.
		killAt := next + 5 + 3*round
		killOn := "begin"
		if round%2 == 1 {
			killOn = "durable"
		}
		inflight := -1
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 1 && f[0] == "durable" && killOn == "durable" && inflight >= killAt {
				_ = cmd.Process.Signal(syscall.SIGKILL)
				break
			}
			if len(f) < 2 {
				continue
			}
			i, _ := strconv.Atoi(f[1])
			switch f[0] {
			case "ack":
				off, p := placedWrite(i, stripes)
				copy(image[off:], p)
				next = i + 1
			case "begin":
				inflight = i
			case "error":
				t.Fatalf("the writer failed: %s", sc.Text())
			}
			if f[0] == "begin" && i >= killAt && killOn == "begin" {
				_ = cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
		_ = cmd.Wait()
		if inflight < 0 {
			t.Fatal("the writer announced no write")
		}
		// Read back from the members with a Store that remembers nothing.
		reader := *c.store
		got := make([]byte, stripes<<20)
		if _, err := reader.ReadAt(ctx, v, got, 0); err != nil {
			t.Fatalf("round %d: read after the kill: %v", round, err)
		}
		off, p := placedWrite(inflight, stripes)
		with := bytes.Clone(image)
		copy(with[off:], p)
		switch {
		case bytes.Equal(got, image):
			t.Logf("round %d: killed during write %d, which did not land", round, inflight)
		case bytes.Equal(got, with):
			t.Logf("round %d: killed during write %d, which landed whole", round, inflight)
			image = with
		default:
			for j := range got {
				if got[j] != image[j] {
					t.Fatalf("round %d: after the kill during write %d, byte %d (stripe %d) is neither the acknowledged data nor the write in flight", round, inflight, j, j>>20)
				}
			}
		}
		next = inflight + 1
	}
	// A writer killed after 3 of its 6 shard PUTs (fewer than k): its
	// partial generation, newer than the current one, is not current — the
	// members that answered rule out its acknowledgement.
	g0 := groupOf(v, 0, 4)
	maxGen := int64(0)
	for slot := 0; slot < 6; slot++ {
		for _, h := range c.holding(t, roundRobin(6)(g0, slot), v, 0) {
			maxGen = max(maxGen, h.Generation)
		}
	}
	for slot := 0; slot < 3; slot++ {
		ref := c.holding(t, roundRobin(6)(g0, slot), v, 0)[0]
		payload := random(t, int(ref.SizeBytes))
		sums := append([]string(nil), ref.ShardChecksums...)
		sums[slot] = shardChecksum(payload)
		h := &shardserver.ShardHeader{Volume: v.Name(), VolumeUID: string(v.Object.UID), PolicyRef: v.Policy, StripeID: 0, ShardIndex: slot,
			Generation: maxGen + 1, Algorithm: string(v.Algorithm), DataShards: 4, ParityShards: 2, StripeSizeBytes: 1 << 20,
			StartLBA: ref.StartLBA, EndLBA: ref.EndLBA, SizeBytes: ref.SizeBytes, Checksum: sums[slot], ShardChecksums: sums,
			StripeChecksum: "partial-" + ref.StripeChecksum, WrittenUnixNano: time.Now().UnixNano(), WriterEpoch: uint64(rounds), PlacementGroups: 4}
		var addr string
		for _, s := range c.servers {
			if s.pool == roundRobin(6)(g0, slot) {
				addr = testenv.Addr(s.port)
			}
		}
		if _, err := c.client.Put(ctx, addr, h, payload); err != nil {
			t.Fatal(err)
		}
	}
	reader := *c.store
	got := make([]byte, stripes<<20)
	if _, err := reader.ReadAt(ctx, v, got, 0); err != nil || !bytes.Equal(got, image) {
		t.Fatalf("read with a partial newer generation on 3 members: %v (exact: %v)", err, bytes.Equal(got, image))
	}
	// A last writer: every stripe once more; afterwards each member holds
	// exactly one generation of its slot (the killed writers' partial
	// generations freed).
	last := *c.store
	last.WriterEpoch, last.Groups = uint64(rounds+1), &stripe.Groups{}
	for id := int64(0); id < stripes; id++ {
		p := random(t, 4096)
		if err := last.WriteAt(ctx, v, p, id<<20); err != nil {
			t.Fatal(err)
		}
		copy(image[id<<20:], p)
		g := groupOf(v, id, 4)
		for slot := 0; slot < 6; slot++ {
			if held := c.holding(t, roundRobin(6)(g, slot), v, id); len(held) != 1 {
				t.Fatalf("stripe %d slot %d holds %d generations after a clean write: %+v", id, slot, len(held), held)
			}
		}
	}
	if _, err := c.store.ReadAt(ctx, v, got, 0); err != nil || !bytes.Equal(got, image) {
		t.Fatalf("final read: %v (exact: %v)", err, bytes.Equal(got, image))
	}
}
