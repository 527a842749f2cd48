package transfer

import (
	"context"

	"golang.org/x/crypto/ssh"
)

// Identifier is an optional extension of Authorizer: it names the member a
// client key belongs to. When the server's Authorizer implements it, every
// handler's context carries that name (Sender), so that a handler can
// check the sender against the replicated state.
type Identifier interface {
	Identify(key ssh.PublicKey) (node string, ok bool)
}

const (
	extKey  = "key"
	extNode = "node"
)

// senderExtensions records who a connection's key is: its fingerprint and,
// when the authorizer can tell, the member's name.
func senderExtensions(a Authorizer, key ssh.PublicKey) map[string]string {
	ext := map[string]string{extKey: ssh.FingerprintSHA256(key)}
	if id, ok := a.(Identifier); ok {
		if node, ok := id.Identify(key); ok {
			ext[extNode] = node
		}
	}
	return ext
}

type senderCtxKey struct{}

// ContextWithSender returns ctx naming the member a stream comes from. The
// server sets it from the client key; tests with their own stream plumbing
// may set it too.
func ContextWithSender(ctx context.Context, node string) context.Context {
	if node == "" {
		return ctx
	}
	return context.WithValue(ctx, senderCtxKey{}, node)
}

// Sender returns the member a handler's stream comes from, as bound to its
// SSH client key; ok is false when the server's Authorizer cannot name it.
func Sender(ctx context.Context) (node string, ok bool) {
	node, ok = ctx.Value(senderCtxKey{}).(string)
	return node, ok && node != ""
}
