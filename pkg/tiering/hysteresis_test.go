package tiering

import (
	"testing"
	"time"
)

// Promotion uses the watermarks as they are; demotion only below a watermark
// by the margin (watermarks 5000/2000/500, margin 10 %).
func TestHysteresis(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	p := testPolicy()
	p.Hysteresis = 0.10
	noWarm := testPolicy()
	noWarm.Hysteresis = 0.10
	delete(noWarm.Selectors, Warm)
	vol := func(pool string) Volume {
		return Volume{Name: "pv", MayastorVolume: true, Published: true, ReplicaPools: []string{pool}}
	}
	cases := []struct {
		name   string
		p      Policy
		pool   string
		iops   float64
		action Action
		code   string
		to     Tier
	}{
		{"warm promoted at the watermark", p, "warm-1", 5000, Move, CodeMove, Hot},
		{"hot keeps its tier just below the watermark", p, "hot-1", 4900, Stay, CodeHysteresis, Hot},
		{"hot keeps its tier at the margin", p, "hot-1", 4500, Stay, CodeHysteresis, Hot},
		{"hot demoted below the margin", p, "hot-1", 4499, Move, CodeMove, Warm},
		{"cold promoted at the warm watermark", p, "cold-1", 2000, Move, CodeMove, Warm},
		{"warm keeps its tier just under the low watermark", p, "warm-1", 460, Stay, CodeHysteresis, Warm},
		{"warm demoted below the low margin", p, "warm-1", 449, Move, CodeMove, Cold},
		// A hot volume that falls far goes straight to where it belongs.
		{"hot falls straight to cold", p, "hot-1", 10, Move, CodeMove, Cold},
		// Within the low margin the margin-adjusted IOPS fall in the dead band.
		{"hot within the low margin stays (dead band after the margin)", p, "hot-1", 470, Stay, CodeHysteresis, Hot},
		{"no warm tier: hot within the low margin stays", noWarm, "hot-1", 480, Stay, CodeHysteresis, Hot},
		{"no warm tier: hot below the low margin goes cold", noWarm, "hot-1", 440, Move, CodeMove, Cold},
		{"cold jumps straight to hot", p, "cold-1", 6000, Move, CodeMove, Hot},
	}
	for _, c := range cases {
		d := Decide(c.p, vol(c.pool), known(c.iops), poolTiers, now)
		if d.Action != c.action || d.Code != c.code || d.To != c.to {
			t.Errorf("%s: got %s/%s →%q (%s), want %s/%s →%q", c.name, d.Action, d.Code, d.To, d.Reason, c.action, c.code, c.to)
		}
	}
	// A volume flapping 4900 ↔ 5100 around the high watermark moves once.
	tier, moves := Warm, 0
	for i := range 20 {
		x := 4900.0
		if i%2 == 1 {
			x = 5100
		}
		pool := map[Tier]string{Hot: "hot-1", Warm: "warm-1", Cold: "cold-1"}[tier]
		if d := Decide(p, vol(pool), known(x), poolTiers, now); d.Action == Move {
			tier, moves = d.To, moves+1
		}
	}
	if moves != 1 || tier != Hot {
		t.Fatalf("flapping volume moved %d times, ended on %s; want 1 move to hot", moves, tier)
	}
}

func TestParseHysteresis(t *testing.T) {
	for in, want := range map[string]float64{"10": 0.10, "0": 0, " 2.5 ": 0.025, "50": 0.5} {
		if got, err := ParseHysteresis(in); err != nil || got != want {
			t.Errorf("ParseHysteresis(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ten", "-1", "100", "NaN", "1e400"} {
		if _, err := ParseHysteresis(in); err == nil {
			t.Errorf("ParseHysteresis(%q) accepted", in)
		}
	}
}
