// wire_rules.c: the protocol's rules on a decoded or outgoing message
// (aai_wire_check, aai_wire_rules) and the names of kinds and statuses.
// Nothing here keeps state or takes a lock.
//
// Design notes.
//
// * The same rules run on encode (AA_EINVAL), so a bug on our side shows up
//   at the sender rather than as a closed connection at the peer. The one
//   exception: texts longer than AAI_WIRE_TEXT_MAX are cut on encode,
//   because an over-long error message should not lose the result.
#include "wire.h"
#include "wire_impl.h"

const char *
aai_wire_kind_name(aai_wire_kind kind)
{
	switch (kind) {
	case AAI_WIRE_START:
		return "start";
	case AAI_WIRE_COMPLETE:
		return "complete";
	case AAI_WIRE_CANCEL:
		return "cancel";
	case AAI_WIRE_PROGRESS:
		return "progress";
	case AAI_WIRE_HEARTBEAT:
		return "heartbeat";
	case AAI_WIRE_HELLO:
		return "hello";
	case AAI_WIRE_GOODBYE:
		return "goodbye";
	default:
		return "none";
	}
}

const char *
aai_wire_status_name(aai_wire_status status)
{
	switch (status) {
	case AAI_WIRE_COMPLETED:
		return "completed";
	case AAI_WIRE_CANCELED:
		return "canceled";
	case AAI_WIRE_FAILED:
		return "failed";
	case AAI_WIRE_REJECTED:
		return "rejected";
	default:
		return "invalid";
	}
}

// name_ok says whether s is a valid method name: 1..AAI_WIRE_METHOD_MAX
// bytes of well-formed UTF-8, none of them a control character (C0 or
// DEL). Which bytes may appear is all a JSON log needs to escape.
static bool
name_ok(const char *s)
{
	size_t n = 0;
	if (s == NULL) {
		return false;
	}
	for (; s[n] != '\0'; n++) {
		unsigned char ch = (unsigned char)s[n];
		if (n >= AAI_WIRE_METHOD_MAX || ch < 0x20 || ch == 0x7f) {
			return false;
		}
	}
	return n > 0 && aai_wire_utf8_ok((const uint8_t *)s, n);
}

static bool
single_cancel_type(uint32_t t)
{
	return t == AA_CANCEL_TERMINAL || t == AA_CANCEL_PARTIAL ||
	       t == AA_CANCEL_TOTAL;
}

static int
check_hello(const char **why, const aai_wire_hello *h)
{
	if (h->version == 0) {
		*why = "hello without a version";
		return AA_EPROTO;
	}
	if (h->max_msg_size < AAI_WIRE_MIN_MSG_SIZE) {
		*why = "hello with max message size below 512";
		return AA_EPROTO;
	}
	switch (h->role) {
	case AAI_WIRE_ROLE_CLIENT:
		if (h->instance_id == 0) {
			*why = "client hello without an instance id";
			return AA_EPROTO;
		}
		// The server-only fields are ignored, not checked.
		return 0;
	case AAI_WIRE_ROLE_SERVER:
		if (h->max_pending == 0) {
			*why = "server hello with max pending ops 0";
			return AA_EPROTO;
		}
		if (h->conn_id == 0) {
			*why = "server hello without a connection id";
			return AA_EPROTO;
		}
		if (h->n_methods > AAI_WIRE_METHODS_MAX ||
		    (h->n_methods > 0 && h->methods == NULL)) {
			*why = "server hello with a bad method table";
			return AA_EPROTO;
		}
		for (size_t i = 0; i < h->n_methods; i++) {
			if (!name_ok(h->methods[i].name)) {
				*why = "server hello with a bad method name";
				return AA_EPROTO;
			}
			if ((h->methods[i].cancel_types &
			     ~(uint32_t)AAI_WIRE_CANCEL_MASK) != 0) {
				*why = "server hello with bad cancel types";
				return AA_EPROTO;
			}
		}
		return 0;
	default:
		*why = "hello with an unknown role";
		return AA_EPROTO;
	}
}

static int
check_complete(const char **why, const aai_wire_msg *m, bool encoding)
{
	uint32_t err = m->complete.error;

	if (m->op_id == 0) {
		*why = "complete with op id 0";
		return AA_EPROTO;
	}
	if (err > AAI_WIRE_ERROR_MAX) {
		*why = "complete with an error code out of range";
		return AA_EPROTO;
	}
	switch (m->complete.status) {
	case AAI_WIRE_COMPLETED:
		if (err != 0) {
			*why = "completed with an error code";
			return AA_EPROTO;
		}
		break;
	case AAI_WIRE_CANCELED:
		// ECANCELED: the client's Cancel; ETIMEDOUT: the deadline;
		// ESRVCANCEL: the server on its own.
		if (err != 0 && err != AA_ECANCELED && err != AA_ETIMEDOUT &&
		    err != AA_ESRVCANCEL) {
			*why = "canceled with an error code other than "
			       "ECANCELED, ETIMEDOUT or ESRVCANCEL";
			return AA_EPROTO;
		}
		break;
	case AAI_WIRE_FAILED:
	case AAI_WIRE_REJECTED:
		if (err == 0) {
			*why = "failed or rejected without an error code";
			return AA_EPROTO;
		}
		break;
	default:
		*why = "complete with an unknown status";
		return AA_EPROTO;
	}
	if (!encoding &&
	    aai_wire_text_len(m->complete.message, AAI_WIRE_TEXT_MAX) >
	        AAI_WIRE_TEXT_MAX) {
		*why = "complete with an over-long message";
		return AA_EPROTO;
	}
	if (m->complete.payload == NULL && m->complete.payload_len != 0) {
		*why = "complete with a NULL payload";
		return AA_EPROTO;
	}
	return 0;
}

// check_msg applies the protocol's rules; encoding relaxes the text limit
// (encode cuts texts instead).
static int
check_msg(const char **why, const aai_wire_msg *m, bool encoding)
{
	switch (m->kind) {
	case AAI_WIRE_START:
		if (m->op_id == 0) {
			*why = "start with op id 0";
			return AA_EPROTO;
		}
		if (!name_ok(m->start.method)) {
			*why = "start with an empty, long or bad method name";
			return AA_EPROTO;
		}
		if ((m->start.cancel_types &
		     ~(uint32_t)AAI_WIRE_CANCEL_MASK) != 0) {
			*why = "start with bad cancel types";
			return AA_EPROTO;
		}
		if (m->start.payload == NULL && m->start.payload_len != 0) {
			*why = "start with a NULL payload";
			return AA_EPROTO;
		}
		return 0;
	case AAI_WIRE_COMPLETE:
		return check_complete(why, m, encoding);
	case AAI_WIRE_CANCEL:
		if (m->op_id == 0) {
			*why = "cancel with op id 0";
			return AA_EPROTO;
		}
		if (!single_cancel_type(m->cancel.type)) {
			*why = "cancel with a bad cancellation type";
			return AA_EPROTO;
		}
		return 0;
	case AAI_WIRE_PROGRESS:
		if (m->op_id == 0) {
			*why = "progress with op id 0";
			return AA_EPROTO;
		}
		if (m->progress.payload == NULL &&
		    m->progress.payload_len != 0) {
			*why = "progress with a NULL payload";
			return AA_EPROTO;
		}
		return 0;
	case AAI_WIRE_HEARTBEAT:
		return 0;
	case AAI_WIRE_HELLO:
		return check_hello(why, &m->hello);
	case AAI_WIRE_GOODBYE:
		if (m->goodbye.reason > AAI_WIRE_ERROR_MAX) {
			*why = "goodbye with a reason out of range";
			return AA_EPROTO;
		}
		if (!encoding &&
		    aai_wire_text_len(m->goodbye.message, AAI_WIRE_TEXT_MAX) >
		        AAI_WIRE_TEXT_MAX) {
			*why = "goodbye with an over-long message";
			return AA_EPROTO;
		}
		return 0;
	default:
		*why = "no message body";
		return AA_EPROTO;
	}
}

int
aai_wire_rules(const char **why, const aai_wire_msg *m, bool encoding)
{
	return check_msg(why, m, encoding);
}

int
aai_wire_check(const char **why, const aai_wire_msg *m)
{
	const char *unused;
	return check_msg(why != NULL ? why : &unused, m, false);
}
