package ecvolume

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/billyronks/couchestor/pkg/journal"
)

// The JournalQuorum condition follows the journal's replicas: True while a
// majority is in sync (Degraded while one is being caught up), False below.
func TestJournalQuorumCondition(t *testing.T) {
	for _, tc := range []struct {
		inSync  []bool
		status  metav1.ConditionStatus
		reason  string
		mention string
	}{
		{[]bool{true, true, true}, metav1.ConditionTrue, "InSync", "all 3"},
		{[]bool{true, false, true}, metav1.ConditionTrue, "Degraded", "replicas 1 are caught up"},
		{[]bool{true, false, false}, metav1.ConditionFalse, "QuorumLost", "writes wait until replicas 1,2"},
		{[]bool{false, false, false}, metav1.ConditionFalse, "QuorumLost", "0 of 3"},
		{[]bool{true}, metav1.ConditionTrue, "InSync", "all 1"},
	} {
		c := journalQuorumCondition(journal.Health{InSync: tc.inSync, Quorum: len(tc.inSync)/2 + 1})
		if c.Type != ConditionJournalQuorum || c.Status != tc.status || c.Reason != tc.reason || !strings.Contains(c.Message, tc.mention) {
			t.Errorf("in sync %v: %+v, want %s/%s mentioning %q", tc.inSync, c, tc.status, tc.reason, tc.mention)
		}
	}
}
