package stripeindex

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
)

func mkStripe(name, vol string, id, start, end int64) *storagev1.ECStripe {
	return &storagev1.ECStripe{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: storagev1.ECStripeSpec{
		VolumeRef: vol, StripeID: id, PolicyRef: "ec", LbaRange: storagev1.LbaRange{StartLba: start, EndLba: end}}}
}

// The index must agree with a brute-force scan under random adds, updates and
// deletes, including overlapping ranges and repeated ids (raced admissions).
func TestStripeIndexMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	x := NewStripeIndex()
	live := map[string]*storagev1.ECStripe{}
	brute := func(vol string, s, e int64, self string) []string {
		var out []string
		for n, st := range live {
			if n != self && st.Spec.VolumeRef == vol && st.Spec.LbaRange.StartLba < e && s < st.Spec.LbaRange.EndLba {
				out = append(out, n)
			}
		}
		return out
	}
	for step := 0; step < 20000; step++ {
		vol := fmt.Sprintf("v%d", rng.IntN(3))
		switch op := rng.IntN(10); {
		case op < 5:
			name := fmt.Sprintf("s%d", rng.IntN(400))
			s := rng.Int64N(5000)
			st := mkStripe(name, vol, rng.Int64N(50), s, s+1+rng.Int64N(64))
			if old, ok := live[name]; ok {
				x.Update(old, st)
			} else {
				x.Add(st)
			}
			live[name] = st
		case op < 7:
			for n, st := range live {
				x.Delete(st)
				delete(live, n)
				break
			}
		default:
			s := rng.Int64N(5000)
			e := s + 1 + rng.Int64N(64)
			self := fmt.Sprintf("s%d", rng.IntN(400))
			want := brute(vol, s, e, self)
			got, found := x.Overlapping(vol, s, e, self)
			if found != (len(want) > 0) || (found && !slices.Contains(want, got.Name)) {
				t.Fatalf("step %d: Overlapping(%s,[%d,%d),%s) = %v,%v; brute force %v", step, vol, s, e, self, got, found, want)
			}
			id := rng.Int64N(50)
			var withID []string
			for n, st := range live {
				if n != self && st.Spec.VolumeRef == vol && st.Spec.StripeID == id {
					withID = append(withID, n)
				}
			}
			r, found := x.StripeWithID(vol, id, self)
			if found != (len(withID) > 0) || (found && !slices.Contains(withID, r.Name)) {
				t.Fatalf("step %d: StripeWithID(%s,%d,%s) = %v,%v; brute force %v", step, vol, id, self, r, found, withID)
			}
		}
	}
	total := 0
	for _, v := range []string{"v0", "v1", "v2"} {
		total += x.Len(v)
	}
	if total != len(live) || x.StripesOfPolicy("ec") != len(live) {
		t.Fatalf("index holds %d stripes (policy count %d), want %d", total, x.StripesOfPolicy("ec"), len(live))
	}
}

func TestStripeIndexStatusOnlyUpdateIsFree(t *testing.T) {
	x := NewStripeIndex()
	a := mkStripe("a", "v", 1, 0, 128)
	x.Add(a)
	b := a.DeepCopy()
	b.Status.State = storagev1.StripeDegraded
	x.Update(a, b)
	if x.Len("v") != 1 || x.StripesOfPolicy("ec") != 1 {
		t.Fatal("status update changed the index")
	}
	c := b.DeepCopy()
	c.Spec.LbaRange = storagev1.LbaRange{StartLba: 128, EndLba: 256}
	x.Update(b, c)
	if _, found := x.Overlapping("v", 0, 128, "z"); found {
		t.Fatal("old range still indexed after update")
	}
	if r, found := x.Overlapping("v", 200, 201, "z"); !found || r.Name != "a" {
		t.Fatal("new range not indexed after update")
	}
}

// BenchmarkStripeIndex: 100,000 stripes of one volume (1 MiB stripes, 2048
// LBAs each). Reports the p99 latency of the in-process admission check
// (ValidateECStripeNeighbours: stripeId + overlap), the index's heap bytes
// per stripe, and the time to build the index from the objects a cold cache
// lists (added in random order, as an informer's initial list delivers them).
func BenchmarkStripeIndex(b *testing.B) {
	const n = 100_000
	const span = 2048
	objs := make([]*storagev1.ECStripe, n)
	for i := range objs {
		objs[i] = mkStripe(fmt.Sprintf("vol-0123-stripe-%06d", i), "vol-0123", int64(i), int64(i)*span, int64(i+1)*span)
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(n, func(i, j int) { objs[i], objs[j] = objs[j], objs[i] })

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	x := NewStripeIndex()
	for _, o := range objs {
		x.Add(o)
	}
	build := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	bytesPerStripe := float64(after.HeapAlloc-before.HeapAlloc) / n
	runtime.KeepAlive(x)
	runtime.KeepAlive(objs) // the objects belong to the cache, not to the index

	rng := rand.New(rand.NewPCG(5, 6))
	lat := make([]time.Duration, 0, b.N)
	path := field.NewPath("spec")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Half are valid appends past the end, half collide with an existing stripe.
		id := int64(n + i)
		s := int64(n) * span
		if i%2 == 1 {
			s = rng.Int64N(n) * span
		}
		cand := mkStripe("candidate", "vol-0123", id, s, s+span)
		t0 := time.Now()
		errs := storagev1.ValidateECStripeNeighbours(cand.Name, &cand.Spec, x, path)
		lat = append(lat, time.Since(t0))
		if (i%2 == 1) != (len(errs) > 0) {
			b.Fatalf("candidate %d at %d judged %v", i, s, errs)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns/check")
	b.ReportMetric(bytesPerStripe, "index-B/stripe")
	b.ReportMetric(float64(build.Milliseconds()), "build-ms/100k")
}

// The per-policy counts (what the ErasureCodingPolicy roll-up and the
// webhook's "stripes exist" check read) follow adds, state changes, moves
// between volumes and deletes, and listeners hear every per-state delta.
func TestStripeIndexPolicyCounts(t *testing.T) {
	x := NewStripeIndex()
	heard := map[storagev1.ECStripeState]int64{}
	x.OnPolicyChange(func(policy string, state storagev1.ECStripeState, delta int64) {
		if policy == "ec" {
			heard[state] += delta
		}
	})
	a, b := mkStripe("a", "v1", 0, 0, 128), mkStripe("b", "v1", 1, 128, 256)
	a.Status.State, b.Status.State = storagev1.StripeHealthy, storagev1.StripeHealthy
	x.Add(a)
	x.Add(b)
	a2 := a.DeepCopy()
	a2.Status.State = storagev1.StripeDegraded
	x.Update(a, a2)
	b2 := b.DeepCopy()
	b2.Spec.VolumeRef = "v2"
	x.Update(b, b2)
	want := PolicyCounts{Total: 2, ByState: map[storagev1.ECStripeState]int64{storagev1.StripeHealthy: 1, storagev1.StripeDegraded: 1}, Volumes: 2}
	if got := x.Counts("ec"); got.Total != want.Total || got.Volumes != want.Volumes || !maps.Equal(got.ByState, want.ByState) {
		t.Fatalf("counts %+v, want %+v", got, want)
	}
	if !maps.Equal(heard, want.ByState) {
		t.Fatalf("listener heard %v, want %v", heard, want.ByState)
	}
	x.Delete(a2)
	x.Delete(b2)
	x.Delete(b2) // twice: counted once
	if got := x.Counts("ec"); got.Total != 0 || got.Volumes != 0 || len(got.ByState) != 0 || x.StripesOfPolicy("ec") != 0 {
		t.Fatalf("after deleting every stripe: %+v", got)
	}
	for s, n := range heard {
		if n != 0 {
			t.Fatalf("listener left with %d stripes in state %q", n, s)
		}
	}
}

// Per-volume counts follow adds, state changes, a grown range, a moved
// stripe and deletes, and every change is told after it is counted.
func TestStripeIndexVolumeCounts(t *testing.T) {
	x := NewStripeIndex()
	var heard []string
	x.OnVolumeChange(func(vol string) {
		// Told after the change: the counts read here already include it.
		heard = append(heard, fmt.Sprintf("%s=%d", vol, x.VolumeCounts(vol).Stripes))
	})
	a, b := mkStripe("a", "v1", 0, 0, 128), mkStripe("b", "v1", 1, 128, 256)
	a.Status.State, b.Status.State = storagev1.StripeHealthy, storagev1.StripeWriting
	x.Add(a)
	x.Add(b)
	want := func(vol string, n, bytes int64, by map[storagev1.ECStripeState]int64) {
		t.Helper()
		got := x.VolumeCounts(vol)
		if got.Stripes != n || got.Bytes != bytes || !maps.Equal(got.ByState, by) {
			t.Fatalf("VolumeCounts(%s) = %+v, want %d stripes, %d bytes, %v", vol, got, n, bytes, by)
		}
	}
	want("v1", 2, 256*512, map[storagev1.ECStripeState]int64{storagev1.StripeHealthy: 1, storagev1.StripeWriting: 1})
	b2 := b.DeepCopy()
	b2.Status.State = storagev1.StripeHealthy
	x.Update(b, b2)
	want("v1", 2, 256*512, map[storagev1.ECStripeState]int64{storagev1.StripeHealthy: 2})
	b3 := b2.DeepCopy() // the volume grew: its last stripe's range extends
	b3.Spec.LbaRange.EndLba = 300
	x.Update(b2, b3)
	want("v1", 2, 300*512, map[storagev1.ECStripeState]int64{storagev1.StripeHealthy: 2})
	b4 := b3.DeepCopy()
	b4.Spec.VolumeRef = "v2"
	b4.Status.State = storagev1.StripeDegraded
	x.Update(b3, b4)
	want("v1", 1, 128*512, map[storagev1.ECStripeState]int64{storagev1.StripeHealthy: 1})
	want("v2", 1, (300-128)*512, map[storagev1.ECStripeState]int64{storagev1.StripeDegraded: 1})
	x.Delete(a)
	x.Delete(b4)
	x.Delete(b4) // twice: counted once, told once
	want("v1", 0, 0, map[storagev1.ECStripeState]int64{})
	want("v2", 0, 0, map[storagev1.ECStripeState]int64{})
	wantHeard := []string{"v1=1", "v1=2", "v1=2", "v1=2", "v1=1", "v2=1", "v1=0", "v2=0"}
	if !slices.Equal(heard, wantHeard) {
		t.Fatalf("heard %v, want %v", heard, wantHeard)
	}
}
