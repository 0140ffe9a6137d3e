package mayastorrest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// fixtures are hand-written from v0_api_spec.yaml (and, for pool cordon and
// ReplicaTopology.healthy, from the newer control plane): every field of every
// shape appears in at least one of them.
var fixtures = []struct {
	file string
	into func() any
}{
	{"volume.json", func() any { return new(Volume) }},
	{"volumes.json", func() any { return new(Volumes) }},
	{"pool.json", func() any { return new(Pool) }},
	{"pools.json", func() any { return new([]Pool) }},
	{"nodes.json", func() any { return new([]Node) }},
	{"error.json", func() any { return new(RestJsonError) }},
	{"pool_cordon_req.json", func() any { return new(PoolCordon) }},
}

// TestFixturesRoundTrip fails on a field the structs do not know (a renamed or
// misspelt JSON name) and on one they emit that the fixture does not have.
func TestFixturesRoundTrip(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.file, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", f.file))
			if err != nil {
				t.Fatal(err)
			}
			v := f.into()
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(v); err != nil {
				t.Fatalf("decode %s strictly: %v", f.file, err)
			}
			out, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			var want, got any
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("%s does not round-trip:\nfixture: %s\nencoded: %s", f.file, compact(t, raw), out)
			}
		})
	}
}

func compact(t *testing.T, b []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestFixturesCoverEveryField: every JSON name of every shape is in a fixture,
// so the round trip above checks all of them.
func TestFixturesCoverEveryField(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range fixtures {
		raw, err := os.ReadFile(filepath.Join("testdata", f.file))
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		collectKeys(v, seen)
	}
	var missing []string
	done := map[reflect.Type]bool{}
	for _, f := range fixtures {
		walkFields(reflect.TypeOf(f.into()), done, func(typ reflect.Type, name string) {
			if !seen[name] {
				missing = append(missing, typ.Name()+"."+name)
			}
		})
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("fields no fixture covers: %s", strings.Join(missing, ", "))
	}
}

func collectKeys(v any, seen map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			seen[k] = true
			collectKeys(e, seen)
		}
	case []any:
		for _, e := range x {
			collectKeys(e, seen)
		}
	}
}

func walkFields(t reflect.Type, done map[reflect.Type]bool, visit func(reflect.Type, string)) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || done[t] {
		return
	}
	done[t] = true
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		visit(t, name)
		walkFields(f.Type, done, visit)
	}
}

func TestFixtureValuesDecode(t *testing.T) {
	raw, _ := os.ReadFile("testdata/volume.json")
	var v Volume
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if err := validateVolume(raw); err != nil {
		t.Fatal(err)
	}
	r := v.State.ReplicaTopology["a76adcd6-9df0-47a1-90a5-2d5bf4151572"]
	if r.RebuildProgress == nil || *r.RebuildProgress != 42 || *r.ChildStatus != "Degraded" || *r.ChildStatusReason != "OutOfSpace" || *r.Healthy {
		t.Fatalf("kebab-case fields not decoded: %+v", r)
	}
	if v.State.Target.UUID == v.Spec.UUID {
		t.Fatal("fixture must keep the nexus uuid distinct from the volume's")
	}
	if got := ChildReplicaUUID(v.State.Target.Children[1].URI); got != "a76adcd6-9df0-47a1-90a5-2d5bf4151572" {
		t.Fatalf("ChildReplicaUUID = %q", got)
	}
}
