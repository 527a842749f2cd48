package cluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// Post sends body (streamed, not buffered) to path with the given content
// type and decodes the JSON answer into out (nil to discard): for uploads
// such as `orchestrate restore ARCHIVE`.
// A streamed body is never step-signed: uploads are operator requests.
func (cl *Client) Post(ctx context.Context, path, contentType string, body io.Reader, out any) error {
	if cl.sign != nil {
		return fmt.Errorf("post %s: a signing step client cannot stream a body: %w", path, ErrInvalid)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cl.base+path, body)
	if err != nil {
		return err
	}
	if cl.token != "" {
		req.Header.Set("Authorization", "Bearer "+cl.token)
	}
	return cl.roundTrip(req, http.Header{"Content-Type": {contentType}}, out)
}
