package transfer

import (
	"context"

	"golang.org/x/crypto/ssh"
)

// MemberAuthorizer is an Authorizer that also names who holds a key: the
// server then tells each stream handler which member sent the stream
// (PeerFrom), so that handlers can authorise what that member asks for, not
// just that it is a member.
type MemberAuthorizer interface {
	Authorizer
	// AuthorizedMember returns the member whose client key key is.
	AuthorizedMember(key ssh.PublicKey) (member string, ok bool)
}

// memberExtension is where the server keeps the authenticated member's name
// in the connection's ssh.Permissions.
const memberExtension = "member"

type peerKey struct{}

// withPeer returns ctx carrying the authenticated sender's member name.
func withPeer(ctx context.Context, member string) context.Context {
	return context.WithValue(ctx, peerKey{}, member)
}

// PeerFrom returns the member name the server authenticated the stream's
// sender as (by its SSH client key), or "" when the server's Authorizer does
// not name members. Handlers get it from their ctx.
func PeerFrom(ctx context.Context) string {
	s, _ := ctx.Value(peerKey{}).(string)
	return s
}

// WithPeer returns ctx naming member as a stream's authenticated sender, as
// the server does for handlers. For in-process transports and tests.
func WithPeer(ctx context.Context, member string) context.Context { return withPeer(ctx, member) }
