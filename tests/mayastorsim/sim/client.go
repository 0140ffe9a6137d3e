package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/billyronks/couchestor/tests/mayastorsim/restsim"
)

// Client drives a running simulator over its control API.
type Client struct {
	// Base is "http://host:port".
	Base string
	HTTP *http.Client
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 10 * time.Second}
}

func (c *Client) post(path string, body any) error {
	b, _ := json.Marshal(body)
	resp, err := c.http().Post(c.Base+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("simulator %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("simulator %s: HTTP %d: %s", path, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// SetIOPS makes a volume run at iops from now on.
func (c *Client) SetIOPS(volume string, iops float64) error {
	return c.post("/control/volumes/"+volume+"/iops", map[string]float64{"iops": iops})
}

// SetPublished publishes or unpublishes a volume.
func (c *Client) SetPublished(volume string, published bool) error {
	return c.post("/control/volumes/"+volume+"/published", map[string]bool{"published": published})
}

// State returns the simulator's view of every volume.
func (c *Client) State() (map[string]VolumeState, error) {
	resp, err := c.http().Get(c.Base + "/control/state")
	if err != nil {
		return nil, fmt.Errorf("simulator state: %w", err)
	}
	defer resp.Body.Close()
	var out map[string]VolumeState
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("simulator state: %w", err)
	}
	return out, nil
}

// RESTKnobs changes the REST model's knobs (--api=rest): see restsim.Knobs.
func (c *Client) RESTKnobs(k restsim.Knobs) error { return c.post("/control/rest/knobs", k) }

// RESTFaults makes the next REST requests fail: exact counts of 412s on PUT
// replica_count, 503s and dropped connections.
func (c *Client) RESTFaults(f restsim.Faults) error { return c.post("/control/rest/faults", f) }

// SetRESTNode sets a node's status ("" keeps it) and, if cordoned is not nil,
// its cordon.
func (c *Client) SetRESTNode(id, status string, cordoned *bool) error {
	return c.post("/control/rest/nodes/"+id, map[string]any{"status": status, "cordoned": cordoned})
}

// SetRESTPoolStatus sets a pool's status (Online|Degraded|Faulted|Unknown).
func (c *Client) SetRESTPoolStatus(id, status string) error {
	return c.post("/control/rest/pools/"+id, map[string]string{"status": status})
}

// SetRESTReplicaFaulted marks a replica of a volume faulted (or healthy again).
func (c *Client) SetRESTReplicaFaulted(volumeUUID, replica string, faulted bool) error {
	return c.post("/control/rest/volumes/"+volumeUUID+"/replicas/"+replica, map[string]bool{"faulted": faulted})
}
