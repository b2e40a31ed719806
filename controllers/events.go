package controllers

import (
	"fmt"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/runtime"
)

// maxNoteBytes is the events API's limit on an event's note; a longer note is refused.
const maxNoteBytes = 1024

// eventf records an event whose note is cut to what the events API accepts.
func (r *SecurityProfileReconciler) eventf(regarding, related runtime.Object, eventtype, reason, action, format string, args ...any) {
	r.Recorder.Eventf(regarding, related, eventtype, reason, action, "%s", truncateBytes(fmt.Sprintf(format, args...), maxNoteBytes))
}

// truncateBytes shortens s to at most n bytes, ending with "..." when cut, on a rune boundary.
func truncateBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
