package csi

import (
	"context"
	"strings"
	"testing"
)

// TestFlagsAreChecked: bad flags fail before anything connects, naming the
// flag and the value.
func TestFlagsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node"}, "--node-id"},
		{[]string{"--controller", "--kube-request-timeout", "0s"}, "--kube-request-timeout 0s must be positive"},
		{[]string{}, "--controller, --node or both"},
	} {
		t.Setenv("NODE_NAME", "")
		err := Command(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("couchestor csi %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
