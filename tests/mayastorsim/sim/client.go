package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
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
