# Copyright 2025 holdmount developers
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DISTUTILS_USE_PEP517=setuptools
PYTHON_COMPAT=( python3_{11..13} )

inherit bash-completion-r1 distutils-r1 git-r3 systemd

DESCRIPTION="Keep automounts alive and finalize safely at shutdown and during long builds"
# The project's public repository (placeholder until it is published; override with
# EGIT_OVERRIDE_REPO_HOLDMOUNT_HOLDMOUNT=... in the environment, see git-r3.eclass).
HOMEPAGE="https://holdmount.invalid/"
EGIT_REPO_URI="https://holdmount.invalid/holdmount.git"

LICENSE="LGPL-2.1+"
SLOT="0"
# The test suite needs root, real autofs mounts and systemd-nspawn booting systemd as PID 1.
RESTRICT="test"

RDEPEND="
	dev-python/pystemd[${PYTHON_USEDEP}]
	sys-apps/systemd
"

python_install() {
	distutils-r1_python_install
	# /usr/bin/holdmount runs our launcher (through python-exec, with this implementation's
	# #! line) instead of the generated console script, which imports `re`: see the file
	python_newscript packaging/launcher/holdmount holdmount
}

python_install_all() {
	distutils-r1_python_install_all

	systemd_dounit units/holdmount.service units/holdmount@.service \
		units/holdmount-report.service
	# journalctl -x explains holdmount's MESSAGE_IDs (systemd_update_catalog in pkg_post*)
	insinto /usr/lib/systemd/catalog
	doins packaging/catalog/holdmount.catalog
	doman man/holdmount.8 man/holdmount.toml.5
	newbashcomp completions/holdmount.bash holdmount
	insinto /usr/share/zsh/site-functions
	doins completions/_holdmount
	keepdir /etc/holdmount/conf.d
	# the ostree integration (docs/ostree.md): holdmount-ostree-switch on|off and its files
	exeinto /usr/libexec/holdmount
	doexe packaging/ostree/holdmount-ostree-switch
	insinto /usr/share/holdmount/ostree
	doins packaging/ostree/holdmount-ostree.toml
	insinto /usr/share/holdmount/ostree/ostree-finalize-staged.service.d
	doins packaging/ostree/ostree-finalize-staged.service.d/50-holdmount.conf
	systemd_install_dropins holdmount.service packaging/ostree/holdmount.service.d/50-ostree.conf
	docinto examples
	dodoc packaging/examples/*.toml
	docompress -x "/usr/share/doc/${PF}/examples"
}

pkg_postinst() {
	systemd_update_catalog
	elog "To keep PORTAGE_TMPDIR mounted, writable and safe from systemd-tmpfiles"
	elog "cleanup for a whole emerge, wrap it:"
	elog "  holdmount run --hold /var/tmp/portage --protect --require-writable -- emerge ..."
	elog "The daemon (holdmount.service) is not enabled: write /etc/holdmount/holdmount.toml"
	elog "(examples in /usr/share/doc/${PF}/examples), then"
	elog "  systemctl enable --now holdmount.service holdmount-report.service"
}

pkg_postrm() {
	systemd_update_catalog
}
