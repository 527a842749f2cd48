package cluster

import (
	"context"
	"io"
	"net/http"
)

// Post sends body (streamed, not buffered) to path with the given content
// type and decodes the JSON answer into out (nil to discard): for uploads
// such as `orchestrate restore ARCHIVE`.
func (cl *Client) Post(ctx context.Context, path, contentType string, body io.Reader, out any) error {
	return cl.do(ctx, http.MethodPost, path, body, http.Header{"Content-Type": {contentType}}, out)
}
