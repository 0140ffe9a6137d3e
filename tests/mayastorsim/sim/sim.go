package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	mayastorv1beta3 "github.com/billyronks/couchestor/apis/mayastor/v1beta3"
)

// CSIDriver is Mayastor's CSI driver name.
const CSIDriver = "io.openebs.csi-mayastor"

// Sim is the simulated Mayastor: the model, its API objects and its exporter.
type Sim struct {
	c     client.Client
	sc    *Scenario
	now   func() time.Time
	start time.Time

	// ExternalReplicas hands replica behaviour to another component (tiering
	// part 2's replicasim): after Create the simulator then only keeps each
	// volume's nexus (publication) and leaves status.replicas, status.state and
	// the pools' used/available to it.
	ExternalReplicas bool

	// REST, when set, is the REST control plane (package restsim) that owns
	// volumes, replicas and pools: no MayastorVolume objects are made (a
	// Mayastor 2.x API server has no such kind), publication is forwarded to
	// it and the DiskPools' status follows its pools.
	REST RESTModel
	// DiskPoolVersion is "v1beta2" (default) or "v1beta3".
	DiskPoolVersion string

	mu      sync.Mutex
	pools   map[string]*pool
	volumes map[string]*volume // by PV name
}

type pool struct {
	spec PoolSpec
}

type replica struct {
	uuid string
	pool string
}

type volume struct {
	spec      VolumeSpec
	replicas  []replica
	published bool
	noMetrics bool
	readFrac  float64
	// counters, integrated lazily up to `at`
	reads, writes float64
	rate          float64
	at            time.Time
	schedule      []IOPSStep // pending steps, sorted
}

// RESTModel is what the simulator needs of the REST control plane.
type RESTModel interface {
	SetPublished(uuid string, published bool) error
	Pools(uuid string) []string
	// TargetNode is the node of the volume's nexus ("" when unpublished).
	TargetNode(uuid string) string
	PoolUsage(id string) (capacity, used int64, status string, ok bool)
}

// New builds a simulator over a scenario. now may be nil (time.Now).
func New(c client.Client, sc *Scenario, now func() time.Time) (*Sim, error) {
	if err := sc.normalize(); err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	s := &Sim{c: c, sc: sc, now: now, start: now(), pools: map[string]*pool{}, volumes: map[string]*volume{}}
	for _, p := range sc.Pools {
		s.pools[p.Name] = &pool{spec: p}
	}
	for _, v := range sc.Volumes {
		vol := &volume{spec: v, published: v.Published, noMetrics: v.NoMetrics, readFrac: 0.5, rate: v.IOPS, at: s.start}
		if v.ReadFraction != nil {
			vol.readFrac = *v.ReadFraction
		}
		for i, p := range v.Replicas {
			vol.replicas = append(vol.replicas, replica{uuid: fmt.Sprintf("%s-r%d", v.UUID, i), pool: p})
		}
		vol.schedule = append([]IOPSStep(nil), v.Schedule...)
		sort.Slice(vol.schedule, func(i, j int) bool { return vol.schedule[i].After.Duration < vol.schedule[j].After.Duration })
		s.volumes[v.Name] = vol
	}
	return s, nil
}

// advance integrates a volume's counters up to t, applying schedule steps on the way.
func (s *Sim) advance(v *volume, t time.Time) {
	for len(v.schedule) > 0 {
		at := s.start.Add(v.schedule[0].After.Duration)
		if at.After(t) {
			break
		}
		s.integrate(v, at)
		v.rate = v.schedule[0].IOPS
		v.schedule = v.schedule[1:]
	}
	s.integrate(v, t)
}

func (s *Sim) integrate(v *volume, t time.Time) {
	dt := t.Sub(v.at).Seconds()
	if dt <= 0 {
		return
	}
	if v.published { // an unpublished volume does no I/O
		ops := v.rate * dt
		v.reads += ops * v.readFrac
		v.writes += ops * (1 - v.readFrac)
	}
	v.at = t
}

// Create makes every object of the scenario (idempotent: existing objects are
// brought to the scenario's spec) and writes their status.
func (s *Sim) Create(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.sc.Namespace}}
	if err := s.c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", s.sc.Namespace, err)
	}
	for _, p := range s.sc.Pools {
		disks := p.Disks
		if len(disks) == 0 {
			disks = []string{"/dev/sim-" + p.Name}
		}
		meta := metav1.ObjectMeta{Name: p.Name, Namespace: s.sc.Namespace}
		var err error
		switch s.DiskPoolVersion {
		case "", "v1beta2":
			dp := &mayastorv1beta2.DiskPool{ObjectMeta: meta}
			err = s.upsert(ctx, dp, func() {
				dp.Spec = mayastorv1beta2.DiskPoolSpec{Node: p.Node, Disks: disks, Topology: &mayastorv1beta2.PoolTopology{Labelled: p.Labels}}
			})
		case "v1beta3":
			dp := &mayastorv1beta3.DiskPool{ObjectMeta: meta}
			err = s.upsert(ctx, dp, func() {
				dp.Spec = mayastorv1beta3.DiskPoolSpec{Node: p.Node, Disks: disks, Topology: &mayastorv1beta3.PoolTopology{Labelled: p.Labels}}
			})
		default:
			return fmt.Errorf("DiskPool version %q: must be v1beta2 or v1beta3", s.DiskPoolVersion)
		}
		if err != nil {
			return err
		}
	}
	for _, v := range s.sc.Volumes {
		if err := s.createVolume(ctx, v); err != nil {
			return err
		}
	}
	return s.SyncStatus(ctx)
}

func (s *Sim) createVolume(ctx context.Context, v VolumeSpec) error {
	size := resource.NewQuantity(v.SizeBytes, resource.BinarySI)
	sc := s.sc.StorageClass
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: v.PVC.Name, Namespace: v.PVC.Namespace}}
	if err := s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v.PVC.Namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", v.PVC.Namespace, err)
	}
	if err := s.upsert(ctx, pvc, func() {
		pvc.Labels, pvc.Annotations = v.PVC.Labels, v.PVC.Annotations
		if pvc.CreationTimestamp.IsZero() { // spec is immutable once created
			pvc.Spec = corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: &sc,
				VolumeName:       v.Name,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *size}},
			}
		}
	}); err != nil {
		return err
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: v.Name}}
	if err := s.upsert(ctx, pv, func() {
		if pv.Annotations == nil {
			pv.Annotations = map[string]string{}
		}
		for k, x := range v.PVAnnotations {
			pv.Annotations[k] = x
		}
		pv.Annotations["pv.kubernetes.io/provisioned-by"] = CSIDriver
		pv.Spec = corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              sc,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: CSIDriver, VolumeHandle: v.UUID, FSType: "ext4",
				VolumeAttributes: map[string]string{"protocol": "nvmf", "repl": fmt.Sprint(len(v.Replicas))},
			}},
		}
	}); err != nil {
		return err
	}
	if pvc.Status.Phase != corev1.ClaimBound {
		pvc.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound, AccessModes: pvc.Spec.AccessModes, Capacity: corev1.ResourceList{corev1.ResourceStorage: *size}}
		if err := s.c.Status().Update(ctx, pvc); err != nil {
			return fmt.Errorf("bind PVC %s/%s: %w", pvc.Namespace, pvc.Name, err)
		}
	}
	if s.REST != nil {
		return nil // Mayastor 2.x keeps volumes behind its REST API only
	}
	msv := &mayastorv1alpha1.MayastorVolume{ObjectMeta: metav1.ObjectMeta{Name: v.UUID, Namespace: s.sc.Namespace}}
	return s.upsert(ctx, msv, func() {
		msv.Spec.Size = v.SizeBytes
		msv.Spec.NumReplicas = int32(len(v.Replicas))
	})
}

// upsert creates obj or updates it after mutate.
func (s *Sim) upsert(ctx context.Context, obj client.Object, mutate func()) error {
	err := s.c.Get(ctx, client.ObjectKeyFromObject(obj), obj)
	switch {
	case apierrors.IsNotFound(err):
		mutate()
		if err := s.c.Create(ctx, obj); err != nil {
			return fmt.Errorf("create %T %s: %w", obj, obj.GetName(), err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("get %T %s: %w", obj, obj.GetName(), err)
	}
	mutate()
	if err := s.c.Update(ctx, obj); err != nil {
		return fmt.Errorf("update %T %s: %w", obj, obj.GetName(), err)
	}
	return nil
}

// SyncStatus writes the modelled status of every MayastorVolume and DiskPool
// where it differs from what is stored.
func (s *Sim) SyncStatus(ctx context.Context) error {
	s.mu.Lock()
	names := make([]string, 0, len(s.volumes))
	for n := range s.volumes {
		names = append(names, n)
	}
	s.mu.Unlock()
	sort.Strings(names)
	for _, n := range names {
		if s.REST != nil {
			break
		}
		if err := s.reconcileVolume(ctx, n); err != nil {
			return err
		}
	}
	for _, p := range s.sc.Pools {
		if err := s.reconcilePool(ctx, p.Name); err != nil {
			return err
		}
	}
	return nil
}

// reconcileVolume brings a MayastorVolume's status to the model. (Tiering
// part 2 adds replica behaviour here: react to spec.numReplicas/topology.)
func (s *Sim) reconcileVolume(ctx context.Context, name string) error {
	s.mu.Lock()
	v := s.volumes[name]
	want := mayastorv1alpha1.MayastorVolumeStatus{State: mayastorv1alpha1.StateOnline}
	for _, r := range v.replicas {
		want.Replicas = append(want.Replicas, mayastorv1alpha1.ReplicaStatus{UUID: r.uuid, Pool: r.pool, Node: s.pools[r.pool].spec.Node, State: mayastorv1alpha1.StateOnline, Synced: true})
	}
	if v.published && len(v.replicas) > 0 {
		want.Nexus = &mayastorv1alpha1.NexusStatus{UUID: v.spec.UUID + "-nexus", Node: s.pools[v.replicas[0].pool].spec.Node, State: mayastorv1alpha1.StateOnline}
	}
	key := client.ObjectKey{Namespace: s.sc.Namespace, Name: v.spec.UUID}
	s.mu.Unlock()

	msv := &mayastorv1alpha1.MayastorVolume{}
	if err := s.c.Get(ctx, key, msv); err != nil {
		return fmt.Errorf("get MayastorVolume %s: %w", key.Name, err)
	}
	if s.ExternalReplicas && len(msv.Status.Replicas) > 0 {
		// Keep the replica owner's replicas and state; only publication is ours.
		want.Replicas, want.State = msv.Status.Replicas, msv.Status.State
		if want.Nexus != nil {
			want.Nexus.Node = msv.Status.Replicas[0].Node
		}
	}
	if reflect.DeepEqual(msv.Status, want) {
		return nil
	}
	msv.Status = want
	if err := s.c.Status().Update(ctx, msv); err != nil {
		return fmt.Errorf("update status of MayastorVolume %s: %w", key.Name, err)
	}
	return nil
}

func (s *Sim) reconcilePool(ctx context.Context, name string) error {
	if s.REST != nil || s.DiskPoolVersion == "v1beta3" {
		return s.reconcilePoolREST(ctx, name)
	}
	s.mu.Lock()
	p := s.pools[name]
	var used int64
	for _, v := range s.volumes {
		for _, r := range v.replicas {
			if r.pool == name {
				used += v.spec.SizeBytes
			}
		}
	}
	want := mayastorv1beta2.DiskPoolStatus{
		CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolOnline,
		Capacity: p.spec.CapacityBytes, Used: used, Available: max(0, p.spec.CapacityBytes-used),
	}
	s.mu.Unlock()
	dp := &mayastorv1beta2.DiskPool{}
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: s.sc.Namespace, Name: name}, dp); err != nil {
		return fmt.Errorf("get DiskPool %s: %w", name, err)
	}
	if s.ExternalReplicas && dp.Status.CRState != "" {
		return nil // created: the replica owner accounts used/available from here on
	}
	if dp.Status == want {
		return nil
	}
	dp.Status = want
	if err := s.c.Status().Update(ctx, dp); err != nil {
		return fmt.Errorf("update status of DiskPool %s: %w", name, err)
	}
	return nil
}

// reconcilePoolREST writes a DiskPool's status from the REST model's pool
// (or, without one, from the scenario's replicas), for either version.
func (s *Sim) reconcilePoolREST(ctx context.Context, name string) error {
	s.mu.Lock()
	p := s.pools[name]
	capacity, used, status := p.spec.CapacityBytes, int64(0), "Online"
	if s.REST != nil {
		c, u, st, ok := s.REST.PoolUsage(name)
		if !ok {
			s.mu.Unlock()
			return fmt.Errorf("pool %s: not in the REST model", name)
		}
		capacity, used, status = c, u, st
	} else {
		for _, v := range s.volumes {
			for _, r := range v.replicas {
				if r.pool == name {
					used += v.spec.SizeBytes
				}
			}
		}
	}
	s.mu.Unlock()
	want := mayastorv1beta2.DiskPoolStatus{
		CRState: mayastorv1beta2.CRStateCreated, PoolStatus: mayastorv1beta2.PoolStatus(status),
		Capacity: capacity, Used: used, Available: max(0, capacity-used),
	}
	key := client.ObjectKey{Namespace: s.sc.Namespace, Name: name}
	if s.DiskPoolVersion == "v1beta3" {
		dp := &mayastorv1beta3.DiskPool{}
		if err := s.c.Get(ctx, key, dp); err != nil {
			return fmt.Errorf("get DiskPool %s: %w", name, err)
		}
		if s.REST == nil && s.ExternalReplicas && dp.Status.CRState != "" {
			return nil // created: the replica owner accounts used/available from here on
		}
		w3 := mayastorv1beta3.DiskPoolStatus{CRState: want.CRState, PoolStatus: want.PoolStatus, Capacity: want.Capacity, Used: want.Used, Available: want.Available}
		if reflect.DeepEqual(dp.Status, w3) {
			return nil
		}
		dp.Status = w3
		if err := s.c.Status().Update(ctx, dp); err != nil {
			return fmt.Errorf("update status of DiskPool %s: %w", name, err)
		}
		return nil
	}
	dp := &mayastorv1beta2.DiskPool{}
	if err := s.c.Get(ctx, key, dp); err != nil {
		return fmt.Errorf("get DiskPool %s: %w", name, err)
	}
	if dp.Status == want {
		return nil
	}
	dp.Status = want
	if err := s.c.Status().Update(ctx, dp); err != nil {
		return fmt.Errorf("update status of DiskPool %s: %w", name, err)
	}
	return nil
}

// Run keeps status in line with the model every interval until ctx ends.
func (s *Sim) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.SyncStatus(ctx); err != nil && ctx.Err() == nil && onErr != nil {
				onErr(err)
			}
		}
	}
}

// SetIOPS changes a volume's rate from now on.
func (s *Sim) SetIOPS(name string, iops float64) error {
	if iops < 0 || math.IsNaN(iops) || math.IsInf(iops, 0) {
		return fmt.Errorf("iops %v: must be a finite number >= 0", iops)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[name]
	if !ok {
		return fmt.Errorf("no volume %q", name)
	}
	s.advance(v, s.now())
	v.rate, v.schedule = iops, nil // an explicit rate replaces the rest of the schedule
	return nil
}

// SetPublished publishes (adds a nexus) or unpublishes a volume; the status
// follows at the next sync.
func (s *Sim) SetPublished(name string, published bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[name]
	if !ok {
		return fmt.Errorf("no volume %q", name)
	}
	if s.REST != nil {
		if err := s.REST.SetPublished(v.spec.UUID, published); err != nil {
			return err
		}
	}
	s.advance(v, s.now())
	v.published = published
	return nil
}

// WriteMetrics writes the exporter's counters in the Prometheus text format.
func (s *Sim) WriteMetrics(w *strings.Builder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	names := make([]string, 0, len(s.volumes))
	for n := range s.volumes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, metric := range []string{"volume_num_read_ops", "volume_num_write_ops"} {
		fmt.Fprintf(w, "# HELP %s Simulated io-engine counter (test double).\n# TYPE %s counter\n", metric, metric)
		for _, n := range names {
			v := s.volumes[n]
			s.advance(v, now)
			if !v.published || v.noMetrics {
				continue
			}
			x := v.reads
			if metric == "volume_num_write_ops" {
				x = v.writes
			}
			if s.REST != nil { // io-engine's exporter labels the nexus's node too
				fmt.Fprintf(w, "%s{node=%q,pv_name=%q} %d\n", metric, s.REST.TargetNode(v.spec.UUID), n, int64(x))
				continue
			}
			fmt.Fprintf(w, "%s{pv_name=%q} %d\n", metric, n, int64(x))
		}
	}
}

// VolumeState is what GET /control/state reports per volume.
type VolumeState struct {
	IOPS      float64  `json:"iops"`
	Reads     int64    `json:"reads"`
	Writes    int64    `json:"writes"`
	Published bool     `json:"published"`
	Pools     []string `json:"pools"`
}

// Handler serves /metrics, /healthz and the control API:
//
//	POST /control/volumes/{name}/iops       {"iops": 4800}
//	POST /control/volumes/{name}/published  {"published": false}
//	GET  /control/state
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		var b strings.Builder
		s.WriteMetrics(&b)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(b.String()))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("POST /control/volumes/{name}/iops", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			IOPS *float64 `json:"iops"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.IOPS == nil {
			http.Error(w, `body must be {"iops": <number>}`, http.StatusBadRequest)
			return
		}
		if err := s.SetIOPS(r.PathValue("name"), *body.IOPS); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("POST /control/volumes/{name}/published", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Published *bool `json:"published"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Published == nil {
			http.Error(w, `body must be {"published": <bool>}`, http.StatusBadRequest)
			return
		}
		if err := s.SetPublished(r.PathValue("name"), *body.Published); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if s.REST != nil {
			return
		}
		if err := s.reconcileVolume(r.Context(), r.PathValue("name")); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("GET /control/state", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		out := map[string]VolumeState{}
		now := s.now()
		for n, v := range s.volumes {
			s.advance(v, now)
			st := VolumeState{IOPS: v.rate, Reads: int64(v.reads), Writes: int64(v.writes), Published: v.published}
			if s.REST != nil {
				st.Pools = s.REST.Pools(v.spec.UUID)
			} else {
				for _, r := range v.replicas {
					st.Pools = append(st.Pools, r.pool)
				}
			}
			out[n] = st
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	return mux
}
