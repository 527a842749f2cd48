package enginetest

import "testing"

func TestFakeBehaviour(t *testing.T) {
	Suite(t, FakeHarness{F: NewFake()}, "fake-")
}
