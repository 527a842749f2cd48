package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
)

// The preflight: before the source freezes anything (a pre-copy round
// freezes too), it tells the target what the container would get there
// (engine.RestoreSpec: privileged, binds, devices, capabilities), and the
// target's engine judges that against the target's restore policy and what
// it knows would fail (a bind source missing there). A refusal ends the
// migration while the container runs untouched; the record says why. The
// target's engine applies the same rules again to the archive itself at
// restore, so a source that lies here gains nothing.
//
// It goes over the transfer layer, as the migration's stream will, so it
// reaches the same endpoint with the same member keys. A target whose agent
// predates the preflight has no handler for it; the migration then goes
// ahead (that target has no restore policy to apply either).

// KindPreflight is the preflight's stream kind.
const KindPreflight = "preflight"

// maxPreflightBytes caps a preflight request (the transfer server also
// caps the stream; see cmd's wiring).
const maxPreflightBytes = 1 << 20

// preflightRequest is what the source sends.
type preflightRequest struct {
	Container string             `json:"container"`
	Name      string             `json:"name"`
	Spec      engine.RestoreSpec `json:"spec"`
}

// preflight asks the target whether it would restore c. It returns nil
// when the target agrees, has no say (an older agent) or the local engine
// cannot describe its containers.
func (a *Agent) preflight(ctx context.Context, c engine.Container, req OutRequest, log *slog.Logger) error {
	sp, ok := a.eng.(engine.RestoreSpecer)
	if !ok {
		return nil
	}
	spec, err := sp.RestoreSpec(ctx, c.ID)
	if err != nil {
		return fmt.Errorf("preflight of %s: %w", c.Name, err)
	}
	body, err := json.Marshal(preflightRequest{Container: c.ID, Name: c.Name, Spec: spec})
	if err != nil {
		return err
	}
	hdr := transfer.StreamHeader{Kind: KindPreflight, ID: req.Migration, Meta: map[string]string{"container": c.ID, "name": c.Name}}
	_, _, err = a.sender.Stream(ctx, req.TargetAddr, hdr, func(w io.Writer) error {
		_, err := w.Write(body)
		return err
	})
	if errors.Is(err, transfer.ErrNoHandler) {
		log.Info("target has no preflight (an older agent); going ahead", "to", req.TargetHost)
		return nil
	}
	if err != nil {
		return fmt.Errorf("target %s refuses %s before anything froze: %w", req.TargetHost, c.Name, err)
	}
	return nil
}

// handlePreflight is the target's half: the local engine judges the spec.
func (a *Agent) handlePreflight(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	var pr preflightRequest
	if err := json.NewDecoder(io.LimitReader(r, maxPreflightBytes)).Decode(&pr); err != nil {
		return nil, fmt.Errorf("preflight %s: %w", h.ID, err)
	}
	if ck, ok := a.eng.(engine.RestoreChecker); ok {
		if err := ck.CheckRestore(ctx, pr.Spec); err != nil {
			a.log.Warn("preflight refused", "migration", h.ID, "container", pr.Name, "err", err)
			return nil, fmt.Errorf("%s on %s: %w", pr.Name, a.host, err)
		}
	}
	return []byte("{}"), nil
}
