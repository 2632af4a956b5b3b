// aa-test-labels: concurrent
// test_service.c: typed services (aa/service.h) between the real client
// and server layers: a service with several methods and nested messages
// round-trips over inproc, ipc and tcp; the fingerprints travel in the
// Hello and follow the stream docs/services.md defines; a payload of the
// wrong type is refused before the handler (and a proto2 payload without
// a required field); a client built from a changed .proto is refused
// with AA_ENOTSUP (another process: tests/peer/svc_v2_client.c); the
// API's and registration's errors; the JSON converter. The calls'
// cancellation timelines, progress, errors and allocator are in
// test_service_calls.c; the fixture in svc_fixture.c.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "svc_fixture.h"
#include "svc_legacy.pb-c.h"

TestSuite(service, .init = setup, .fini = teardown, .timeout = 60);

// ---- Round trips ----

static void
round_trip(const char *kind)
{
	static seen s, e;
	order_buf b;
	seen_init(&s);
	seen_init(&e);
	sample_order(&b);
	env_up(kind);

	aa_op *op = call("Place", &b.o.base, &s);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED, "error %d: %s", aa_op_error(op),
	             aa_op_error_msg(op));
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__receipt__descriptor), 0);
	Aa__Test__Receipt *r = (Aa__Test__Receipt *)out;
	cr_assert_eq(r->order_id, 1ull << 40);
	cr_assert_eq(r->total_items, 7);
	cr_assert_eq(r->n_items, 2);
	cr_assert_str_eq(r->items[0]->sku, "A-1");
	cr_assert_eq(r->items[0]->n_tags, 2);
	cr_assert_str_eq(r->items[0]->tags[1], "big");
	cr_assert_str_eq(r->items[1]->sku, "B-2");
	cr_assert_not_null(r->ship_to);
	cr_assert_str_eq(r->ship_to->city, "Springfield");
	cr_assert_str_eq(r->summary, "ann paid by 4111");
	aa_service_result_free(op, out);
	aa_op_unref(op);

	// Echo: every field comes back as it went.
	aa_op *eop = call("Echo", &b.o.base, &e);
	gate_wait(&e.done);
	cr_assert_eq(e.state, AA_COMPLETED);
	cr_assert_eq(
	    aa_service_result(&out, eop, &aa__test__order__descriptor), 0);
	cr_assert(same_encoding(out, &b.o.base));
	Aa__Test__Order *o = (Aa__Test__Order *)out;
	cr_assert_eq(o->payment_case, AA__TEST__ORDER__PAYMENT_CARD);
	cr_assert_eq(o->delta, -7);
	cr_assert_eq(o->note.len, 4);
	aa_service_result_free(eop, out);
	aa_op_unref(eop);

	aa_client_stats cs;
	aa_client_stats_get(E.cli, &cs);
	cr_assert_eq(cs.sent_start, 2, "one Start per call");
	cr_assert_eq(cs.recv_complete, 2, "one Complete per call");
	cr_assert_eq(cs.sent_cancel, 0);
}

Test(service, round_trip_inproc)
{
	round_trip("inproc");
}
Test(service, round_trip_ipc)
{
	round_trip("ipc");
}
Test(service, round_trip_tcp)
{
	round_trip("tcp");
}

Test(service, fingerprints_travel_in_the_hello)
{
	env_up("inproc");
	for (unsigned i = 0; i < SHOP->n_methods; i++) {
		char name[256];
		uint64_t fp = 0;
		cr_assert_eq(aa_service_method_name(name, sizeof(name), SHOP,
		                                    SHOP->methods[i].name),
		             0);
		cr_assert_eq(aa_client_method_fingerprint(E.cli, name, &fp),
		             0);
		cr_assert_eq(fp, aa_service_fingerprint(&SHOP->methods[i]),
		             "%s", name);
		cr_assert_neq(fp, 0);
	}
	uint64_t fp = 1;
	cr_assert_eq(aa_client_method_fingerprint(E.cli, "plain", &fp), 0);
	cr_assert_eq(fp, 0, "a byte method is untyped");
	cr_assert_eq(aa_client_method_fingerprint(E.cli, "nope", &fp),
	             AA_ENOENT);
	const char *bad = "unset";
	cr_assert_eq(aa_service_check(E.cli, SHOP, &bad), 0);
	// Place and Echo take the same input but return other types.
	cr_assert_neq(aa_service_fingerprint(&SHOP->methods[0]),
	              aa_service_fingerprint(&SHOP->methods[2]));
}

Test(service, a_method_not_served_is_unknown)
{
	static const aa_service_method only_hold[] = {
	    {.name = "Hold", .start = h_hold, .cancel_types = AA_CANCEL_ALL},
	};
	server_up("inproc", only_hold, 1);
	cr_assert_eq(aa_client_open(&E.cli, &(aa_client_opts){.url = E.url}),
	             0);
	order_buf b;
	sample_order(&b);
	aa_op *op = NULL;
	cr_assert_eq(
	    aa_service_call(&op, E.cli, SHOP, "Place", &b.o.base, NULL, NULL),
	    AA_ENOENT);
	cr_assert_eq(
	    aa_service_call(&op, E.cli, SHOP, "NoSuch", &b.o.base, NULL, NULL),
	    AA_ENOENT);
	const char *bad = NULL;
	cr_assert_eq(aa_service_check(E.cli, SHOP, &bad), AA_ENOENT);
	cr_assert_str_eq(bad, "Place");
	cr_assert_null(op);
}

Test(service, input_of_another_type_is_refused_locally)
{
	env_up("inproc");
	Aa__Test__HoldRequest hr = AA__TEST__HOLD_REQUEST__INIT;
	aa_op *op = NULL;
	cr_assert_eq(
	    aa_service_call(&op, E.cli, SHOP, "Place", &hr.base, NULL, NULL),
	    AA_EINVAL);
	cr_assert_eq(
	    aa_service_call(&op, E.cli, NULL, "Place", &hr.base, NULL, NULL),
	    AA_EINVAL);
	cr_assert_null(op);
	aa_client_stats cs;
	aa_client_stats_get(E.cli, &cs);
	cr_assert_eq(cs.sent_start, 0, "nothing was sent");
}

// ---- A payload of the wrong type never reaches the handler ----

Test(service, wrong_type_payload_is_refused_before_the_handler)
{
	env_up("ipc");
	// Field 1 of Order is a uint64 (a varint); the first bytes give it
	// as a length-delimited string, the second a truncated field, the
	// third are a packed Node (another message type of the same file,
	// whose field 1 is a string).
	uint8_t bad[3][8] = {{0x0a, 0x01, 'A'}, {0x1a, 0x05, 0x01}};
	size_t bad_len[3] = {3, 3, 0};
	Aa__Test__Node node = AA__TEST__NODE__INIT;
	node.name = "leaf";
	bad_len[2] = protobuf_c_message_get_packed_size(&node.base);
	cr_assert_leq(bad_len[2], sizeof(bad[2]));
	protobuf_c_message_pack(&node.base, bad[2]);
	for (size_t i = 0; i < 3; i++) {
		static seen s;
		seen_init(&s);
		aa_op *op = NULL;
		cr_assert_eq(aa_client_call(&op, E.cli, "aa.test.Shop/Place",
		                            bad[i], bad_len[i], NULL, NULL),
		             0);
		cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
		gate_wait(&s.done);
		cr_assert_eq(s.state, AA_ERROR);
		cr_assert_eq(aa_op_error(op), AA_EINVAL);
		cr_assert_str_eq(aa_op_error_msg(op),
		                 "payload is not a valid aa.test.Order");
		cr_assert_eq(aa_op_settlement(op), AA_SETTLE_NEVER_STARTED,
		             "rejected: nothing ran");
		aa_op_unref(op);
	}
	cr_assert_eq(atomic_load(&S.handler_calls), 0);
	aa_server_stats ss;
	aa_server_stats_get(E.srv, &ss);
	cr_assert_eq(ss.rejected, 3);
	cr_assert_eq(ss.started, 0);
	// The connection is fine: a good call works.
	static seen g;
	seen_init(&g);
	order_buf b;
	sample_order(&b);
	aa_op *op = call("Place", &b.o.base, &g);
	gate_wait(&g.done);
	cr_assert_eq(g.state, AA_COMPLETED);
	cr_assert_eq(atomic_load(&S.handler_calls), 1);
	aa_op_unref(op);
}

// Protobuf encodings carry no type name: a HoldRequest{tag} is a valid
// Order{id} (field 1, a varint in both), and the decoder keeps field
// numbers it does not know aside. The server accepts such bytes; only
// the fingerprint tells typed clients apart (docs/services.md).
Test(service, compatible_bytes_of_another_type_are_accepted)
{
	static seen s;
	uint8_t buf[16];
	Aa__Test__HoldRequest hr = AA__TEST__HOLD_REQUEST__INIT;
	hr.tag = 3;
	size_t len = protobuf_c_message_pack(&hr.base, buf);
	buf[len++] = 0xf8; // field 31, a varint: unknown to Order
	buf[len++] = 0x01;
	buf[len++] = 0x05;
	seen_init(&s);
	env_up("inproc");
	aa_op *op = NULL;
	cr_assert_eq(aa_client_call(&op, E.cli, "aa.test.Shop/Place", buf, len,
	                            NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_COMPLETED);
	cr_assert_eq(atomic_load(&S.handler_calls), 1);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__receipt__descriptor), 0);
	cr_assert_eq(((Aa__Test__Receipt *)out)->order_id, 3);
	aa_service_result_free(op, out);
	aa_op_unref(op);
}

// The rejection text a method gives (aa_server_reject_reason) is its own
// call's only: the next rejection without one says aa_strerror's.
Test(service, a_method_gives_its_rejection_a_text)
{
	static const struct {
		const char *payload;
		aa_state state;
		const char *msg;
	} cases[] = {
	    {"x", AA_ERROR, "picky wants an even length"},
	    {"xy", AA_ERROR, "invalid argument"},
	    {"wxyz", AA_COMPLETED, ""},
	};
	env_up("inproc");
	aa_server_reject_reason("outside any method: ignored");
	for (size_t i = 0; i < 3; i++) {
		static seen s;
		seen_init(&s);
		aa_op *op = NULL;
		cr_assert_eq(
		    aa_client_call(&op, E.cli, "picky", cases[i].payload,
		                   strlen(cases[i].payload), NULL, NULL),
		    0);
		cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
		gate_wait(&s.done);
		cr_assert_eq((int)s.state, (int)cases[i].state, "%s",
		             cases[i].payload);
		cr_assert_str_eq(aa_op_error_msg(op), cases[i].msg);
		aa_op_unref(op);
	}
}

// ---- A client built from a changed .proto ----

#ifdef AA_SVC_V2_BIN
Test(service, a_client_built_from_a_changed_proto_is_refused)
{
	server_up("ipc", shop_methods,
	          sizeof(shop_methods) / sizeof(shop_methods[0]));
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		execl(AA_SVC_V2_BIN, AA_SVC_V2_BIN, E.url, (char *)NULL);
		_exit(127);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	          "svc_v2_client failed (status %d): see its output", status);
	aa_server_stats ss;
	aa_server_stats_get(E.srv, &ss);
	cr_assert_eq(ss.started, 1, "only Tree reached the server");
	cr_assert_eq(atomic_load(&S.handler_calls), 1);
}
#endif

// ---- The fingerprint is the one docs/services.md defines ----

// fnv_tokens hashes a stream of tokens separated by spaces as
// docs/services.md ("The fingerprint") says: 64-bit FNV-1a over each
// token's bytes followed by one NUL byte; 0 becomes 1.
static uint64_t
fnv_tokens(const char *stream)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (const char *p = stream; *p != '\0'; p++) {
		unsigned char c = *p == ' ' ? '\0' : (unsigned char)*p;
		h ^= c;
		h *= 0x100000001b3ull;
	}
	h ^= '\0'; // the last token's NUL
	h *= 0x100000001b3ull;
	return h != 0 ? h : 1;
}

static uint64_t
fingerprint_of(const char *method)
{
	const ProtobufCMethodDescriptor *md =
	    protobuf_c_service_descriptor_get_method_by_name(SHOP, method);
	cr_assert_not_null(md);
	return aa_service_fingerprint(md);
}

Test(service, the_fingerprint_follows_the_documented_stream)
{
	const char *hold = "in msg aa.test.HoldRequest 1 1 none uint32 "
	                   "out msg aa.test.HoldReply 1 1 none uint32";
	// Node is recursive, and the output type was met already: refs.
	const char *tree = "in msg aa.test.Node 2 1 none string "
	                   "2 repeated message ref aa.test.Node "
	                   "out ref aa.test.Node";
	// Nested types, an enum, bytes and a oneof (its members are plain
	// proto3 fields: label none), in field number order.
	const char *place = "in msg aa.test.Order 11 "
	                    "1 none uint64 "
	                    "2 none string "
	                    "3 repeated message msg aa.test.Item 3 "
	                    "1 none string 2 none uint32 3 repeated string "
	                    "4 none message msg aa.test.Address 2 "
	                    "1 none string 2 none string "
	                    "5 none enum enum aa.test.Order.Priority "
	                    "6 none bytes "
	                    "7 none string "
	                    "8 none uint64 "
	                    "9 none double "
	                    "10 none sint64 "
	                    "11 none bool "
	                    "out msg aa.test.Receipt 5 "
	                    "1 none uint64 "
	                    "2 none uint32 "
	                    "3 repeated message ref aa.test.Item "
	                    "4 none message ref aa.test.Address "
	                    "5 none string";
	cr_assert_eq(fingerprint_of("Hold"), fnv_tokens(hold));
	cr_assert_eq(fingerprint_of("Tree"), fnv_tokens(tree));
	cr_assert_eq(fingerprint_of("Place"), fnv_tokens(place));
	// proto2 labels.
	cr_assert_eq(
	    aa_service_fingerprint(&aa__test__archive__descriptor.methods[0]),
	    fnv_tokens("in msg aa.test.Legacy 2 1 required uint32 "
	               "2 optional string out ref aa.test.Legacy"));
	cr_assert_neq(fnv_tokens(place), fnv_tokens("in"), "not vacuous");
}

// ---- proto2: required fields ----

static const aa_service_method archive_methods[] = {
    {.name = "Get", .start = h_echo, .cancel_types = AA_CANCEL_ALL},
};

Test(service, a_missing_required_field_is_refused)
{
	static seen s;
	seen_init(&s);
	snprintf(E.url, sizeof(E.url), "inproc://aa-svc-legacy-%d",
	         (int)getpid());
	cr_assert_eq(aa_server_alloc(&E.srv, &(aa_server_opts){0}), 0);
	cr_assert_eq(aa_service_register(&E.svc, E.srv,
	                                 &aa__test__archive__descriptor,
	                                 archive_methods, 1),
	             0);
	cr_assert_eq(aa_server_listen(E.srv, E.url), 0);
	cr_assert_eq(aa_client_open(&E.cli, &(aa_client_opts){.url = E.url}),
	             0);

	// JSON: {} has no id.
	ProtobufCMessage *m = NULL;
	char err[160];
	cr_assert_eq(aa_service_from_json(&m, &aa__test__legacy__descriptor,
	                                  "{\"note\":\"x\"}", 12, err,
	                                  sizeof(err)),
	             AA_EINVAL);
	cr_assert_null(m);
	cr_assert_not_null(
	    strstr(err, "aa.test.Legacy: required field \"id\" is missing"),
	    "%s", err);
	// null is "not given": the default, so still missing.
	cr_assert_eq(aa_service_from_json(&m, &aa__test__legacy__descriptor,
	                                  "{\"id\":null}", 11, err,
	                                  sizeof(err)),
	             AA_EINVAL);
	cr_assert_eq(aa_service_from_json(&m, &aa__test__legacy__descriptor,
	                                  "{\"id\":0}", 8, err, sizeof(err)),
	             0, "%s", err);
	aa_service_message_free(m);

	// The wire: a payload without field 1 never reaches the handler.
	static const uint8_t note_only[] = {0x12, 0x01, 'x'};
	aa_op *op = NULL;
	cr_assert_eq(aa_client_call(&op, E.cli, "aa.test.Archive/Get",
	                            note_only, sizeof(note_only), NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &s), 0);
	gate_wait(&s.done);
	cr_assert_eq(s.state, AA_ERROR);
	cr_assert_eq(aa_op_error(op), AA_EINVAL);
	cr_assert_str_eq(aa_op_error_msg(op),
	                 "payload is not a valid aa.test.Legacy");
	cr_assert_eq(atomic_load(&S.handler_calls), 0);
	aa_op_unref(op);

	// With it, a typed call round-trips.
	static seen g;
	seen_init(&g);
	Aa__Test__Legacy in = AA__TEST__LEGACY__INIT;
	in.id = 7;
	cr_assert_eq(aa_service_call(&op, E.cli,
	                             &aa__test__archive__descriptor, "Get",
	                             &in.base, NULL, NULL),
	             0);
	cr_assert_eq(aa_op_set_handler(op, on_done, &g), 0);
	gate_wait(&g.done);
	cr_assert_eq(g.state, AA_COMPLETED);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(
	    aa_service_result(&out, op, &aa__test__legacy__descriptor), 0);
	cr_assert_eq(((Aa__Test__Legacy *)out)->id, 7);
	aa_service_result_free(op, out);
	aa_op_unref(op);
}

// ---- Errors of the API ----

Test(service, api_errors)
{
	static seen s;
	order_buf b;
	char name[32];
	seen_init(&s);
	sample_order(&b);
	env_up("inproc");
	cr_assert_eq(aa_service_method_name(name, sizeof(name), SHOP, "Place"),
	             0);
	cr_assert_str_eq(name, "aa.test.Shop/Place");
	cr_assert_eq(aa_service_method_name(name, 8, SHOP, "Place"), AA_EINVAL,
	             "does not fit");
	cr_assert_eq(aa_service_method_name(name, sizeof(name), SHOP, "Nope"),
	             AA_ENOENT);
	cr_assert_eq(aa_service_check(E.cli, NULL, NULL), AA_EINVAL);

	aa_op *op = call("Place", &b.o.base, &s);
	gate_wait(&s.done);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(aa_service_result(&out, op, NULL), AA_EINVAL);
	// A Receipt's field 1 is a varint, a Node's a string.
	cr_assert_eq(aa_service_result(&out, op, &aa__test__node__descriptor),
	             AA_EPROTO, "the result is not a Node");
	cr_assert_null(out);
	cr_assert_eq(aa_service_complete(op, NULL), AA_EINVAL);
	aa_op_unref(op);
}

// ---- Registration ----

Test(service, registration_errors_register_nothing)
{
	aa_service *sv = NULL;
	cr_assert_eq(aa_server_alloc(&E.srv, &(aa_server_opts){0}), 0);
	aa_service_method bad_name[] = {
	    {.name = "Hold", .start = h_hold},
	    {.name = "Nope", .start = h_hold},
	};
	cr_assert_eq(aa_service_register(&sv, E.srv, SHOP, bad_name, 2),
	             AA_EINVAL);
	aa_service_method twice[] = {
	    {.name = "Hold", .start = h_hold},
	    {.name = "Hold", .start = h_hold},
	};
	cr_assert_eq(aa_service_register(&sv, E.srv, SHOP, twice, 2),
	             AA_EINVAL);
	aa_service_method no_fn[] = {{.name = "Hold"}};
	cr_assert_eq(aa_service_register(&sv, E.srv, SHOP, no_fn, 1),
	             AA_EINVAL);
	cr_assert_null(sv);
	// Nothing was registered: the whole service still goes in.
	cr_assert_eq(aa_service_register(&E.svc, E.srv, SHOP, shop_methods, 3),
	             0);
	// A second time, every name is taken.
	cr_assert_eq(aa_service_register(&sv, E.srv, SHOP, shop_methods, 3),
	             AA_EEXIST);
	cr_assert_null(sv);
}

// ---- JSON ----

Test(service, json_round_trip)
{
	order_buf b;
	sample_order(&b);
	char *js = NULL;
	size_t len = 0;
	cr_assert_eq(aa_service_to_json(&js, &len, &b.o.base), 0);
	cr_assert_eq(strlen(js), len);
	test_note("%s", js);
	ProtobufCMessage *m = NULL;
	char err[128];
	cr_assert_eq(aa_service_from_json(&m, &aa__test__order__descriptor, js,
	                                  len, err, sizeof(err)),
	             0, "%s", err);
	cr_assert(same_encoding(m, &b.o.base));
	aa_service_message_free(m);
	free(js);

	// lowerCamelCase names, 64-bit numbers as strings, enum numbers,
	// escapes, null.
	const char *in = "{\"id\":\"18446744073709551615\",\"shipTo\":{"
	                 "\"city\":\"K\\u00f6ln \\ud83d\\ude00\"},"
	                 "\"priority\":1,\"voucher\":3,\"note\":null,"
	                 "\"items\":[{\"sku\":\"a\\n\",\"tags\":[]}]}";
	cr_assert_eq(aa_service_from_json(&m, &aa__test__order__descriptor, in,
	                                  strlen(in), err, sizeof(err)),
	             0, "%s", err);
	Aa__Test__Order *o = (Aa__Test__Order *)m;
	cr_assert_eq(o->id, UINT64_MAX);
	cr_assert_str_eq(o->ship_to->city, "K\xc3\xb6ln \xf0\x9f\x98\x80");
	cr_assert_eq(o->priority, AA__TEST__ORDER__PRIORITY__EXPRESS);
	cr_assert_eq(o->payment_case, AA__TEST__ORDER__PAYMENT_VOUCHER);
	cr_assert_eq(o->voucher, 3);
	cr_assert_eq(o->n_items, 1);
	cr_assert_str_eq(o->items[0]->sku, "a\n");
	aa_service_message_free(m);
}

Test(service, json_errors_say_where_and_lose_nothing)
{
	static const struct {
		const char *json;
		const char *why;
	} cases[] = {
	    {"{\"nope\":1}", "has no field \"nope\""},
	    {"{\"id\":-1}", "not an unsigned integer"},
	    {"{\"id\":1.5}", "not an unsigned integer"},
	    {"{\"customer\":5}", "expected a string"},
	    {"{\"card\":\"x\",\"voucher\":1}", "another member of its oneof"},
	    {"{\"id\":1,\"id\":2}", "given twice"},
	    {"{\"priority\":\"LOW\"}", "has no value LOW"},
	    {"{\"note\":\"!!\"}", "base64"},
	    {"{\"items\":[{\"sku\":\"a\"},{\"quantity\":true}]}",
	     "expected a number"},
	    {"{\"gift\":1}", "expected true or false"},
	    {"{\"customer\":\"a\"", "expected , or }"},
	    {"{} x", "text after the object"},
	    {"[1]", "expected an object"},
	    {"{\"customer\":\"\\ud800\"}", "surrogate"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ProtobufCMessage *m = NULL;
		char err[160];
		cr_assert_eq(
		    aa_service_from_json(&m, &aa__test__order__descriptor,
		                         cases[i].json, strlen(cases[i].json),
		                         err, sizeof(err)),
		    AA_EINVAL, "%s", cases[i].json);
		cr_assert_null(m);
		cr_assert_not_null(strstr(err, cases[i].why), "%s: %s",
		                   cases[i].json, err);
	}
	// Deep nesting of a recursive type is refused, not a stack
	// overflow, and what was built is freed (the live check and
	// LeakSanitizer would say).
	char deep[2048] = "";
	for (int i = 0; i < 100; i++) {
		strcat(deep, "{\"children\":[");
	}
	ProtobufCMessage *m = NULL;
	char err[160];
	cr_assert_eq(aa_service_from_json(&m, &aa__test__node__descriptor,
	                                  deep, strlen(deep), err,
	                                  sizeof(err)),
	             AA_EINVAL);
	cr_assert_not_null(strstr(err, "nested too deeply"), "%s", err);
}

Test(service, recursive_types_round_trip)
{
	static seen s;
	seen_init(&s);
	env_up("inproc");
	const char *in =
	    "{\"name\":\"root\",\"children\":[{\"name\":\"a\","
	    "\"children\":[{\"name\":\"a1\"}]},{\"name\":\"b\"}]}";
	ProtobufCMessage *m = NULL;
	cr_assert_eq(aa_service_from_json(&m, &aa__test__node__descriptor, in,
	                                  strlen(in), NULL, 0),
	             0);
	aa_op *op = call("Tree", m, &s);
	aa_service_message_free(m);
	gate_wait(&s.done);
	ProtobufCMessage *out = NULL;
	cr_assert_eq(aa_service_result(&out, op, &aa__test__node__descriptor),
	             0);
	char *js = NULL;
	cr_assert_eq(aa_service_to_json(&js, NULL, out), 0);
	cr_assert_str_eq(js, in);
	free(js);
	aa_service_result_free(op, out);
	aa_op_unref(op);
}

// ---- The fingerprint cache, filled by threads at once ----

typedef struct checker {
	thr t;
	gate *go;
	int rv;
} checker;

static void *
check_main(void *arg)
{
	checker *k = arg;
	gate_wait(k->go);
	k->rv = aa_service_check(E.cli, SHOP, NULL);
	return NULL;
}

Test(service, first_checks_race_to_fill_the_fingerprint_cache)
{
	gate go;
	checker ks[4];
	env_up("inproc");
	gate_init(&go);
	for (int i = 0; i < 4; i++) {
		ks[i].go = &go;
		thr_start(&ks[i].t, check_main, &ks[i]);
	}
	gate_open(&go);
	for (int i = 0; i < 4; i++) {
		thr_join(&ks[i].t);
		cr_assert_eq(ks[i].rv, 0);
	}
	gate_fini(&go);
	cr_assert_eq(aa_service_check(E.cli, SHOP, NULL), 0, "from the cache");
}
