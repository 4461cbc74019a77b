/* ecbench.c: what mbedTLS's public-key operations cost on this machine,
 * the floor of a full TLS handshake with the mbedTLS backend (see
 * docs/performance.md, TLS). CPU time per operation, 100 iterations:
 * ECDHE key generation and shared secret for X25519, P-256 and P-384,
 * and an ECDSA signature with the key given (bench/run/tls/ec.key).
 *
 *   make -C bench ecbench && bench/ecbench bench/run/tls/ec.key */
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>

#include <stdio.h>
#include <time.h>

#define N 100

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    mbedtls_entropy_context e;
    mbedtls_ctr_drbg_context d;
    mbedtls_entropy_init(&e);
    mbedtls_ctr_drbg_init(&d);
    if (mbedtls_ctr_drbg_seed(&d, mbedtls_entropy_func, &e, NULL, 0) != 0)
        return 1;
    const mbedtls_ecp_group_id ids[] = { MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1 };
    const char *names[] = { "X25519", "P-256", "P-384" };
    for (int k = 0; k < 3; k++) {
        double gen = 0, shared = 0;
        for (int i = 0; i < N; i++) {
            mbedtls_ecdh_context a, b;
            mbedtls_ecdh_init(&a);
            mbedtls_ecdh_init(&b);
            mbedtls_ecdh_setup(&a, ids[k]);
            mbedtls_ecdh_setup(&b, ids[k]);
            unsigned char pa[200], pb[200], sec[100];
            size_t la, lb, ls;
            double t = now_us();
            mbedtls_ecdh_make_params(&a, &la, pa, sizeof pa, mbedtls_ctr_drbg_random, &d);
            gen += now_us() - t;
            const unsigned char *p = pa;
            mbedtls_ecdh_read_params(&b, &p, pa + la);
            mbedtls_ecdh_make_public(&b, &lb, pb, sizeof pb, mbedtls_ctr_drbg_random, &d);
            mbedtls_ecdh_read_public(&a, pb, lb);
            t = now_us();
            mbedtls_ecdh_calc_secret(&a, &ls, sec, sizeof sec, mbedtls_ctr_drbg_random, &d);
            shared += now_us() - t;
            mbedtls_ecdh_free(&a);
            mbedtls_ecdh_free(&b);
        }
        printf("%-7s ECDHE key %6.0f us  shared secret %6.0f us\n", names[k], gen / N, shared / N);
    }
    if (argc > 1) {
        mbedtls_pk_context pk;
        mbedtls_pk_init(&pk);
        if (mbedtls_pk_parse_keyfile(&pk, argv[1], NULL) != 0) {
            fprintf(stderr, "cannot read %s\n", argv[1]);
            return 1;
        }
        unsigned char hash[32] = { 1 }, sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
        size_t sl;
        double t = now_us();
        for (int i = 0; i < N; i++)
            mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &sl, mbedtls_ctr_drbg_random, &d);
        printf("%s signature %6.0f us\n", mbedtls_pk_get_name(&pk), (now_us() - t) / N);
        mbedtls_pk_free(&pk);
    }
    return 0;
}
