// tsan_filter_check.c: a deliberately racy program for the TSan phase. Two
// threads write one global without any ordering, in our own code: run
// with tsan_filter.c preloaded, ThreadSanitizer must still report it (the
// filter drops only races whose accesses libnng makes). CTest passes when
// the report is on the output (tests/CMakeLists.txt).
#include <pthread.h>
#include <stdio.h>

static int shared_counter;
static pthread_barrier_t both_ready;

static void *
writer(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&both_ready);
	shared_counter++; // racy on purpose
	return NULL;
}

int
main(void)
{
	pthread_t a, b;
	pthread_barrier_init(&both_ready, NULL, 2);
	pthread_create(&a, NULL, writer, NULL);
	pthread_create(&b, NULL, writer, NULL);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	pthread_barrier_destroy(&both_ready);
	printf("counter %d\n", shared_counter);
	return 0;
}
